"""PostgresStore against a real PostgreSQL + pgvector server (the session's throwaway cluster)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
import pytest

from memory.context import FrozenMap, UserContext, freeze_json
from memory.errors import StorageError
from memory.lexical import query_terms, read_varint, user_bm25, user_terms
from memory.records import Memory
from memory.storage.postgres import PostgresStore, mask_url
from memory.storage.postgres_writer import notify_payloads
from memory.storage.protocol import (
    COMMITTED,
    Conflict,
    ContextWrite,
    ErasureNote,
    MemoryEdit,
    NewMemory,
    Unit,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(postgres_url, vector_dim=4)
    await s.open()
    yield s
    await s.close()


async def opened(url: str, **options: float) -> PostgresStore:
    s = PostgresStore(url, vector_dim=4, **options)  # type: ignore[arg-type]
    await s.open()
    return s


def context(uid: str, version: int, count: int = 0, name: str = "") -> UserContext:
    return UserContext.new(uid, T0).copy_with(version=version, conversations_count=count, display_name=name)


def write(ctx: UserContext, change: dict[str, object] | None = None, at: datetime = T0) -> ContextWrite:
    return ContextWrite(ctx, ctx.to_json().decode(), at, "test", change or {"count": ctx.conversations_count})


def memory(mid: int, uid: str, text: str, **fields: object) -> Memory:
    values: dict[str, object] = {"kind": "fact", "created_at": T0, "metadata": FrozenMap({}), **fields}
    return Memory(mid, uid, text, values["kind"], values["created_at"], values["metadata"],  # type: ignore[arg-type]
                  values.get("source_id"), values.get("scope", "dm"))  # type: ignore[arg-type]


def new(m: Memory, context_words: str = "", prev: int | None = None) -> NewMemory:
    return NewMemory(m, m.text, context_words, prev)


def vector(*values: float) -> bytes:
    v = np.array(values, dtype=np.float32)
    return (v / np.linalg.norm(v)).astype("<f4").tobytes()


async def bump(s: PostgresStore, uid: str, expected: int, count: int = 0) -> object:
    return await s.submit(Unit(uid, expected, write(context(uid, expected + 1, count))))


# -- writing and reading back -------------------------------------------------------------------


async def test_every_unit_field_round_trips(store: PostgresStore) -> None:
    ids = await store.reserve_memory_ids(3)
    ctx = context("ann", 1, 1, "Ann")
    meta = freeze_json({"b": 1, "a": [1, 2, {"x": "y"}]})
    first = memory(ids[0], "ann", "I like green tea", metadata=meta, source_id="msg-1", scope="guild:7")
    second = memory(ids[1], "ann", "the tea was cold", created_at=T0 + timedelta(minutes=1))
    unit = Unit("ann", 0, write(ctx, {"display_name": "Ann"}), (new(first), new(second, "green tea", ids[0])))
    assert await store.submit(unit) == COMMITTED

    assert await store.context_data("ann") == ctx.to_json()
    assert await store.load_contexts() == [("ann", ctx.to_json())]
    assert await store.context_versions(["ann", "bob"]) == {"ann": 1}
    assert await store.stored_version("ann") == 1
    [entry] = await store.history("ann")
    assert (entry.version, entry.at, entry.actor, dict(entry.change), entry.context) == (
        1, T0, "test", {"display_name": "Ann"}, ctx,
    )
    assert await store.history_entry("ann", 1) == entry
    assert await store.memories("ann") == [first, second]
    assert await store.memories("ann", scopes=["guild:7"]) == [first]
    assert await store.memories("ann", limit=1, offset=1) == [second]
    assert await store.memories_by_id([ids[1], ids[0], 999_999]) == {ids[0]: first, ids[1]: second}
    assert await store.memories_by_source("msg-1") == [first]
    assert await store.session_neighbours([ids[0]]) == {ids[0]: (None, ids[1]), ids[1]: (ids[0], None)}
    assert await store.scopes_of("ann") == ["dm", "guild:7"]
    assert await store.scoped_ids("ann", ["dm"]) == [ids[1]]
    assert await store.last_memory("ann") == second
    assert await store.memory_counts() == {"ann": 2}
    assert await store.unembedded() == [first, second]

    # embeddings, edits, redactions, erasure notes, compaction, forgets: a second unit
    later = T0 + timedelta(days=2)
    ctx2 = context("ann", 2, 2, "Ann")
    edited = memory(ids[1], "ann", "the tea was hot", created_at=second.created_at)
    unit2 = Unit(
        "ann", 1, write(ctx2, at=later),
        forget_ids=(ids[0],),
        edits=(MemoryEdit(edited, edited.text),),
        redactions=((1, '{"redacted": true}'),),
        compact_before=later,
        erasure=ErasureNote(later, "admin", "memory", 1),
        embeddings=((ids[1], vector(1, 0, 0, 0)),),
    )
    assert await store.submit(unit2) == COMMITTED
    assert await store.memories("ann") == [edited]
    assert await store.session_neighbours([ids[1]]) == {}  # its previous turn was forgotten
    assert await store.embeddings_for([ids[1]]) == [(ids[1], "ann", vector(1, 0, 0, 0))]
    assert await store.embedding_watermark() == (1, ids[1])
    assert await store.version_count("ann") == 1  # version 1 compacted away, 2 kept
    assert await store.users_with_history_before(later + timedelta(seconds=1)) == ["ann"]
    [erasure] = await store.erasures("ann")
    assert (erasure.at, erasure.actor, erasure.request, erasure.rows) == (later, "admin", "memory", 1)
    assert await store.integrity_problems() == ["ok"]

    assert await store.submit(Unit("ann", 2, forget_user=True)) == COMMITTED
    assert await store.load_contexts() == []
    assert await store.memories("ann") == []
    assert await store.history("ann") == []
    assert await store.integrity_problems() == ["ok"]


async def test_a_conflict_writes_nothing(store: PostgresStore) -> None:
    assert await bump(store, "ann", 0, 1) == COMMITTED
    [mid] = await store.reserve_memory_ids(1)
    stale = Unit("ann", 0, write(context("ann", 1, 99)), (new(memory(mid, "ann", "stale words")),))
    assert await store.submit(stale) == Conflict(1)
    assert await store.memories("ann") == []
    assert await store.version_count("ann") == 1
    assert UserContext.from_dict(__import__("orjson").loads(await store.context_data("ann") or b"")).conversations_count == 1
    assert await store.submit(Unit("bob", 3, forget_user=True)) == Conflict(0)
    assert await store.load_contexts() == [("ann", context("ann", 1, 1).to_json())]
    assert store.stats()["conflicts"] == 2
    assert await store.integrity_problems() == ["ok"]


async def test_units_of_one_user_in_one_batch_apply_in_queue_order(store: PostgresStore) -> None:
    futures = [store.submit(Unit("ann", v, write(context("ann", v + 1, v + 1)))) for v in range(5)]
    futures.append(store.submit(Unit("ann", 3, write(context("ann", 4, 0)))))  # built on an old one
    futures.append(store.submit(Unit("ann", 5, write(context("ann", 6, 6)))))  # after a conflict
    outcomes = await asyncio.gather(*futures)
    assert outcomes == [COMMITTED] * 5 + [Conflict(5), Conflict(5)]
    assert store.stats()["largest_batch"] == 7  # one batch: queued before the writer ran
    assert await store.context_versions(["ann"]) == {"ann": 5}
    assert [e.context.conversations_count for e in await store.history("ann")] == [1, 2, 3, 4, 5]


async def test_memory_ids_are_never_handed_out_twice(postgres_url: str) -> None:
    a, b = await opened(postgres_url), await opened(postgres_url)
    try:
        got = [*await a.reserve_memory_ids(5), *await b.reserve_memory_ids(2500), *await a.reserve_memory_ids(1200)]
        assert len(got) == len(set(got)) == 3705
    finally:
        await a.close()
        await b.close()


# -- across processes -----------------------------------------------------------------------


async def test_two_stores_twenty_submitters_each_count_exactly(postgres_url: str) -> None:
    stores = [await opened(postgres_url), await opened(postgres_url)]
    users = [f"user-{i:03d}" for i in range(100)]
    rounds = 1

    async def submitter(s: PostgresStore, seed: int) -> int:
        conflicts = 0
        for r in range(rounds):
            for k in range(len(users)):
                uid = users[(k * 7 + seed * 13 + r) % len(users)]
                while True:  # the system's reload-and-retry loop
                    version = (await s.context_versions([uid])).get(uid, 0)
                    data = await s.context_data(uid)
                    count = UserContext.from_dict(__import__("orjson").loads(data)).conversations_count if data else 0
                    outcome = await s.submit(Unit(uid, version, write(context(uid, version + 1, count + 1))))
                    if outcome == COMMITTED:
                        break
                    conflicts += 1
        return conflicts

    try:
        conflicts = await asyncio.gather(*(submitter(s, i) for s in stores for i in range(20)))
        total = 2 * 20 * rounds * len(users)
        versions = await stores[0].context_versions(users)
        assert sum(versions.values()) == total
        for uid in users:
            data = await stores[1].context_data(uid)
            assert data is not None
            ctx = UserContext.from_dict(__import__("orjson").loads(data))
            assert ctx.conversations_count == ctx.version == versions[uid]
        assert await stores[0].count("context_history") == total
        assert sum(conflicts) > 0  # the two stores did race
        assert await stores[0].integrity_problems() == ["ok"]
    finally:
        for s in stores:
            await s.close()
