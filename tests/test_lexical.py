"""Lexical search: the user's own terms, exact per-user BM25, one tokenisation for both sides."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from memory import MemorySystem
from memory import lexical as lexical_module
from memory.lexical import read_varint, user_bm25, user_terms, words
from memory.recovery import DB_NAME
from memory.storage.sqlite import SqliteStore
from memory.storage.sqlite_connection import sqlite3

DOCS = [
    "my sister Ana moved to Lisbon last spring",
    "Ana loves baking bread and cakes",
    "we went hiking in the mountains near Lisbon",
    "the cake recipe needs three eggs",
    "my brother plays the cello every Sunday",
    "Lisbon has the best custard tarts",
]


def test_words_fold_case_accents_and_apostrophes_alike() -> None:
    assert words("Café CAFÉ cafe\u0301!") == ["café", "café", "cafe\u0301"]  # a mark stays inside
    assert user_terms("u", "Café") == user_terms("u", "CAFE") == user_terms("u", "cafe\u0301")
    assert user_terms("u", "don't") == user_terms("u", "don’t") == user_terms("u", "dont")
    assert user_terms("u", "snake_case") == user_terms("u", "snake case")
    northern = user_terms("u", "北京 Ærø")
    assert northern.split()[0].endswith("0") and "zxaero" not in northern  # whole word, not stemmed
    assert northern.split()[1].endswith("xaero")


def test_read_varint_reads_sqlite_varints() -> None:
    assert read_varint(bytes([0x05])) == 5
    assert read_varint(bytes([0x81, 0x00])) == 128
    assert read_varint(bytes([0x86, 0xC3, 0x17, 0xFF])) == (6 << 14) | (0x43 << 7) | 0x17


async def _search(folder: Path, user: str, query: str) -> list[tuple[int, float]]:
    store = SqliteStore(folder / DB_NAME, readonly=True)
    await store.open(integrity_check=False)
    try:
        return await store.lexical_search(user, lexical_module.query_terms(user, query), 50)
    finally:
        await store.close()


async def _fill(make_system: Callable[..., MemorySystem], folder: Path, users: dict[str, list[str]]) -> None:
    async with make_system(folder) as ms:
        for user, texts in users.items():
            for text in texts:  # turns of a conversation: each indexed with the one before it
                await ms.save_memory(user, text, kind="exchange")


async def test_scores_are_the_users_own_bm25_whatever_else_the_table_holds(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    # Beside 9 users holding the same words (so the same average length), FTS5's IDF changes;
    # the user's scores must not. Alone, each is FTS5's BM25 of a term reweighted by user_idf.
    alone, crowded = tmp_path / "alone", tmp_path / "crowded"
    await _fill(make_system, alone, {"alice": DOCS})
    await _fill(make_system, crowded, {f"u{i}": DOCS for i in range(9)} | {"alice": DOCS})
    query = "sister cello eggs"  # each in 2 of 6 rows (body or context)
    mine = await _search(alone, "alice", query)
    expected: dict[int, float] = {}
    with sqlite3.connect(alone / DB_NAME) as db:
        for term in lexical_module.query_terms("alice", query):
            rows = db.execute(
                "SELECT rowid, -bm25(memories_fts, 1.0, 1.0) FROM memories_fts WHERE memories_fts MATCH ?",
                (f'"{term}"',),
            ).fetchall()
            weight = lexical_module.user_idf(6, len(rows)) / lexical_module.idf(6, len(rows))
            for mid, score in rows:
                expected[mid] = expected.get(mid, 0.0) + score * weight
    assert dict(mine) == pytest.approx(expected, rel=1e-9)
    in_crowd = await _search(crowded, "alice", query)
    with sqlite3.connect(crowded / DB_NAME) as db:
        texts = dict(db.execute("SELECT id, text FROM memories WHERE user_id = 'alice'").fetchall())
    with sqlite3.connect(alone / DB_NAME) as db:
        alone_texts = dict(db.execute("SELECT id, text FROM memories").fetchall())
    assert {texts[mid]: s for mid, s in in_crowd} == pytest.approx(
        {alone_texts[mid]: s for mid, s in mine}, rel=1e-9
    )
    assert len(mine) == 5 and mine[0][1] > mine[-1][1] > 0  # 3 rows by body, 2 by context


async def test_a_new_user_with_two_memories_gets_a_lexical_signal(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    # FTS5's IDF is 0 for a word in half the rows: with 2 memories nothing would score.
    await _fill(make_system, tmp_path, {"alice": ["round 2 item 1", "round 6 item 1"]})
    found = await _search(tmp_path, "alice", "round 2 item 1")
    assert len(found) == 2 and min(score for _, score in found) > 0.1  # FTS5's form: 1e-6 each


def test_user_bm25_reweights_each_term_by_the_users_idf() -> None:
    rare, common = [(1, 2.0)], [(1, 1.0), (2, 1.0), (3, 1.0)]
    scores = user_bm25([rare, common], table_rows=1000, user_rows=10)
    idf, mine = lexical_module.idf, lexical_module.user_idf
    assert scores[1] == pytest.approx(2.0 * mine(10, 1) / idf(1000, 1) + 1.0 * mine(10, 3) / idf(1000, 3))
    assert scores[2] == scores[3] == pytest.approx(mine(10, 3) / idf(1000, 3))
    assert mine(2, 2) > 0 and mine(2, 1) > mine(2, 2)  # positive even for a word in every row
    assert user_bm25([[]], 5, 5) == {}


async def test_users_sharing_a_term_key_still_see_only_their_own_memories(
    tmp_path: Path, make_system: Callable[..., MemorySystem], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lexical_module, "user_key", lambda user_id: "42")  # every user collides
    await _fill(make_system, tmp_path, {"alice": DOCS[:3], "bob": DOCS})
    found = await _search(tmp_path, "alice", "Lisbon cake sister cello")
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        owners = {mid: user for mid, user in db.execute("SELECT id, user_id FROM memories")}
    assert found and {owners[mid] for mid, _ in found} == {"alice"}
    assert len(found) == 3


async def test_stemming_matches_word_forms_and_kinds_filter_after_scoring(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    async with make_system(tmp_path) as ms:
        await ms.save_memory("alice", "I adopted two dogs", kind="fact")
        await ms.save_memory("alice", "the dog barked all night", kind="note")
        results = await ms.retrieve_memory("alice", "dog", kinds=["fact"])
        assert [r.memory.text for r in results] == ["I adopted two dogs"]
    store = SqliteStore(tmp_path / DB_NAME, readonly=True)
    await store.open(integrity_check=False)
    try:
        terms = lexical_module.query_terms("alice", "dog")
        both = await store.lexical_search("alice", terms, 10)
        facts = await store.lexical_search("alice", terms, 10, kinds=["fact"])
    finally:
        await store.close()
    assert len(both) == 2 and len(facts) == 1 and facts[0] in both
