"""Privacy scopes in the library: every memory and exchange carries where it was said, a scoped
retrieve filters inside both searches (k results when k allowed exist), and the operations that
follow a place (edit, forget a scope, retention) reach every copy of the text.

Real SQLite files, real FAISS, the deterministic hashing encoder; file bytes checked directly.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest

from memory import InvalidInputError, MemorySystem
from memory.index import SCORE_ALL_LIMIT, PerUserIndex
from memory.storage.sqlite import SqliteStore
from tests.test_erasure import folder_bytes
from tests.test_store import make_v1_database

GUILD, OTHER = "guild:1", "guild:2"


pytestmark = pytest.mark.both_backends  # one behaviour suite, both storage backends


@pytest.mark.parametrize("reranker", [True, False])
async def test_a_guild_retrieve_never_returns_a_dm_memory_and_still_finds_k(
    make_system: Callable[..., MemorySystem], reranker: bool
) -> None:
    rng = random.Random(11)
    words = ["therapist", "appointment", "lee", "tuesday", "doctor", "clinic", "session", "notes"]
    async with make_system(retrieval={"reranker": reranker}) as ms:
        made = {}
        for i in range(180):  # DM memories far more relevant to the query than the guild's
            scope = (GUILD, "dm", OTHER)[i % 3]
            text = " ".join(rng.sample(words, 5)) if scope != GUILD else f"guild chat {i} about a doctor"
            memory = await ms.save_memory("ana", text, scope=scope)
            made[memory.id] = scope
        for k in (1, 5, 20):
            found = await ms.retrieve_memory("ana", "my therapist appointment with Dr Lee", k, scopes={GUILD})
            assert len(found) == k  # 60 guild memories exist: a post-filter would return fewer
            assert {made[r.memory.id] for r in found} == {GUILD}
        both = await ms.retrieve_memory("ana", "therapist appointment", 20, scopes={GUILD, OTHER})
        assert len(both) == 20 and {r.memory.scope for r in both} <= {GUILD, OTHER}
        assert "dm" in {r.memory.scope for r in await ms.retrieve_memory("ana", "therapist lee", 5)}
        counts = {scope: list(made.values()).count(scope) for scope in (GUILD, "dm", OTHER)}
        for _ in range(25):  # any set of scopes, any k: only those scopes, and min(k, allowed) of them
            scopes = set(rng.sample(sorted(counts), rng.randint(1, 3)))
            k = rng.randint(1, 50)
            query = " ".join(rng.sample(words, 3))
            found = await ms.retrieve_memory("ana", query, k, scopes=scopes)
            assert {made[r.memory.id] for r in found} <= scopes
            assert len(found) == min(k, sum(counts[s] for s in scopes)), (scopes, k)
        assert await ms.retrieve_memory("ana", "therapist", 5, scopes=set()) == []
        with pytest.raises(InvalidInputError, match="scopes"):
            await ms.retrieve_memory("ana", "therapist", 5, scopes="guild:1")


def test_a_large_shard_is_searched_with_an_id_selector_not_filtered_after() -> None:
    index = PerUserIndex(8, "test")
    rng = np.random.default_rng(3)
    n = SCORE_ALL_LIMIT + 500
    vectors = rng.standard_normal((n, 8)).astype(np.float32)
    index.add("ana", list(range(1, n + 1)), vectors)
    allowed = frozenset(range(1, n + 1, 97))  # 16 scattered ids
    top, floor, known = index.search_scored("ana", vectors[0], 10, allowed)
    assert len(top) == 10 and {mid for mid, _ in top} <= allowed
    scores = {mid: float(vectors[mid - 1] @ vectors[0]) for mid in allowed}
    assert [mid for mid, _ in top] == sorted(scores, key=lambda m: -scores[m])[:10]
    assert floor == pytest.approx(min(scores.values()), abs=1e-5)
    small = PerUserIndex(8, "test")
    small.add("ana", list(range(1, 101)), vectors[:100])
    top, floor, known = small.search_scored("ana", vectors[0], 5, frozenset({3, 4, 5}))
    assert {mid for mid, _ in top} == {3, 4, 5} and set(known) == {3, 4, 5}
    assert small.scores_for("ana", [1, 3], vectors[0], frozenset({3})).keys() == {3}


async def test_update_context_keeps_the_scope_on_the_exchange_and_its_memory(ms: MemorySystem) -> None:
    ctx = await ms.update_context(
        "ana", "hello from the guild", "hi", scope=GUILD, metadata={"channel_id": "77"}, source_id="m1"
    )
    [memory] = await ms.get_memories("ana")
    assert (memory.scope, memory.metadata["channel_id"]) == (GUILD, "77")
    assert ctx.recent[-1].scope == GUILD and ctx.recent[-1].memory_id == memory.id
    await ms.update_context("ana", "hello in private", "hi")  # the default is the private scope
    assert [m.scope for m in await ms.get_memories("ana")] == [GUILD, "dm"]
    assert [m.scope for m in await ms.get_memories("ana", scopes={GUILD})] == [GUILD]
    assert await ms.memory_scopes("ana") == ["dm", GUILD]
    # A session never links two scopes: the guild turn lends no words to the DM turn.
    found = await ms.retrieve_memory("ana", "guild", 5, scopes={"dm"})
    assert [r.memory.scope for r in found] == ["dm"] and found[0].lexical_score is None
    await ms.update_context("ana", "more in private", "hi")  # the same scope: one session
    linked = await ms.retrieve_memory("ana", "hello", 5, scopes={"dm"})
    assert {r.memory.text.split("\n")[0] for r in linked if r.lexical_score} == {
        "ana: hello in private",
        "ana: more in private",
    }


def test_rows_from_before_scopes_become_private(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    make_v1_database(path, "ana", "said before scopes", "2025-01-01T00:00:00+00:00")

    async def read() -> list[str]:  # the migration runs on open
        store = SqliteStore(path)
        await store.open()
        try:
            return [m.scope for m in await store.memories("ana")]
        finally:
            await store.close()

    assert asyncio.run(read()) == ["dm"]


@pytest.mark.sqlite_only("reads SQLite's files, the snapshot and the FAISS file")
async def test_an_edit_replaces_the_text_everywhere(ms: MemorySystem) -> None:
    await ms.update_context("ana", "good morning", "morning!", source_id="m0", scope=GUILD)
    await ms.update_context("ana", "I live in Zanzibarville", "Noted!", source_id="m1", scope=GUILD)
    await ms.update_context("ana", "and you?", "I'm a bot", source_id="m2", scope=GUILD)
    await ms.retrieve_memory("ana", "Zanzibarville", 5)  # embedded and indexed
    assert b"zanzibarville" in folder_bytes(ms.data_dir)  # the test can fail
    [edited] = await ms.edit_source("m1", "I live in Quokkatown")
    assert edited.text == "ana: I live in Quokkatown\nBot: Noted!" and edited.scope == GUILD
    [stored] = [m for m in await ms.get_memories("ana") if m.source_id == "m1"]
    assert stored.text == edited.text
    ctx = await ms.get_user_context("ana")
    assert [e.message for e in ctx.recent] == ["good morning", "I live in Quokkatown", "and you?"]
    history = orjson.dumps([e.to_dict() for e in await ms.history("ana")]).decode()
    assert "Zanzibarville" not in history and "Quokkatown" in history
    assert "Zanzibarville" not in orjson.dumps(await ms.export_user("ana")).decode()
    found = await ms.retrieve_memory("ana", "Quokkatown", 1)
    assert found[0].memory.id == edited.id and found[0].lexical_score is not None
    old = await ms.retrieve_memory("ana", "Zanzibarville", 5)
    assert all("Zanzibarville" not in r.memory.text for r in old)
    # The next turn was indexed with the old words as its context: no longer.
    assert b"zanzibarville" not in folder_bytes(ms.data_dir)
    assert await ms.edit_source("m1", "I live in Quokkatown") == []  # the same words: nothing to do
    note = await ms.save_memory("ana", "my cat is Miso", source_id="m3")
    [renamed] = await ms.edit_source("m3", "my cat is Mochi")
    assert (renamed.id, renamed.text) == (note.id, "my cat is Mochi")


async def test_forget_scope_forgets_what_was_said_there_only(ms: MemorySystem) -> None:
    for user in ("ana", "bob"):
        await ms.update_context(user, f"{user} in guild one", "ok", scope=GUILD)
        await ms.update_context(user, f"{user} in guild two", "ok", scope=OTHER)
        await ms.update_context(user, f"{user} in private", "ok")
    assert await ms.forget_scope(GUILD, user_id="bob") == 1
    assert [m.scope for m in await ms.get_memories("bob")] == [OTHER, "dm"]
    assert [m.scope for m in await ms.get_memories("ana")] == [GUILD, OTHER, "dm"]
    assert await ms.forget_scope(GUILD) == 1  # the bot left the guild: everyone's
    for user in ("ana", "bob"):
        ctx = await ms.get_user_context(user)
        assert [e.scope for e in ctx.recent] == [OTHER, "dm"]
        history = orjson.dumps([e.to_dict() for e in await ms.history(user)]).decode()
        assert "in guild one" not in history
    assert b"in guild one" not in folder_bytes(ms.data_dir)
    assert [r.request for r in await ms.erasures("ana")] == ["forget_scope"]


async def test_retention_prunes_old_exchanges_and_compacts_their_history(ms: MemorySystem) -> None:
    await ms.update_context("ana", "an old Zanzibarville story", "ok")
    await ms.update_context("ana", "another old one", "ok")
    week_ago = datetime.now(UTC) - timedelta(days=7)
    note = await ms.save_memory("ana", "a note to keep", created_at=week_ago)
    cutoff = datetime.now(UTC)
    await ms.update_context("ana", "a new one", "ok")
    versions_before = len(await ms.history("ana"))
    assert await ms.prune_before(cutoff) == 2
    memories = await ms.get_memories("ana")
    assert [m.text for m in memories] == ["a note to keep", "ana: a new one\nBot: ok"]
    assert memories[0].id == note.id  # notes are kept whatever their age
    ctx = await ms.get_user_context("ana")
    assert [e.message for e in ctx.recent] == ["a new one"]
    history = await ms.history("ana")
    assert len(history) < versions_before and all(e.at >= cutoff for e in history)
    assert history[-1].version == ctx.version
    assert all("old" not in orjson.dumps(e.to_dict()).decode() for e in history)
    assert b"zanzibarville" not in folder_bytes(ms.data_dir)
    assert await ms.prune_before(cutoff) == 0


async def test_an_export_keeps_the_scopes_and_an_import_restores_them(
    make_system: Callable[..., MemorySystem], tmp_path: Path
) -> None:
    async with make_system() as ms:
        await ms.update_context("ana", "said in the guild", "ok", scope=GUILD)
        await ms.save_memory("ana", "a private note")
        exported = await ms.export_user("ana")
    assert [m["scope"] for m in exported["memories"]] == [GUILD, "dm"]
    assert exported["context"]["recent"][0]["scope"] == GUILD
    async with make_system(tmp_path / "other") as other:
        ctx = await other.import_user(exported)
        assert ctx is not None and [e.scope for e in ctx.recent] == [GUILD]
        assert [m.scope for m in await other.get_memories("ana")] == [GUILD, "dm"]
        unscoped = [{k: v for k, v in m.items() if k != "scope"} for m in exported["memories"]]
        old_style = {**exported, "memories": unscoped}  # an export made before scopes
        await other.forget_user("ana")
        await other.import_user(old_style)
        assert [m.scope for m in await other.get_memories("ana")] == ["dm", "dm"]
