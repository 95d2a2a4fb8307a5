"""PostgresStore against a real PostgreSQL + pgvector server (the session's throwaway cluster)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import numpy as np
import orjson
import pytest

from memory.context import FrozenMap, UserContext, freeze_json
from memory.errors import StorageError, SystemClosedError
from memory.lexical import query_terms, user_terms
from memory.records import Memory
from memory.storage.postgres import PostgresStore
from memory.storage.postgres_lexical import Stemmer
from memory.storage.postgres_writer import notify_payloads
from memory.storage.protocol import (
    COMMITTED,
    Conflict,
    ContextWrite,
    DenseSearch,
    ErasureNote,
    MemoryEdit,
    NewMemory,
    Store,
    Unit,
)
from memory.storage.sqlite import SqliteStore

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


def memory(
    mid: int,
    uid: str,
    text: str,
    *,
    kind: str = "fact",
    created_at: datetime = T0,
    metadata: FrozenMap | None = None,
    source_id: str | None = None,
    scope: str = "dm",
) -> Memory:
    return Memory(mid, uid, text, kind, created_at, metadata or FrozenMap({}), source_id, scope)


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
        1,
        T0,
        "test",
        {"display_name": "Ann"},
        ctx,
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
        "ann",
        1,
        write(ctx2, at=later),
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
    assert (
        UserContext.from_dict(orjson.loads(await store.context_data("ann") or b"")).conversations_count == 1
    )
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
        got = [
            *await a.reserve_memory_ids(5),
            *await b.reserve_memory_ids(2500),
            *await a.reserve_memory_ids(1200),
        ]
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
                    count = UserContext.from_dict(orjson.loads(data)).conversations_count if data else 0
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
            ctx = UserContext.from_dict(orjson.loads(data))
            assert ctx.conversations_count == ctx.version == versions[uid]
        assert await stores[0].count("context_history") == total
        assert sum(conflicts) > 0  # the two stores did race
        assert [s.stats()["retries"] for s in stores] == [0, 0]  # locks in user-id order: no deadlock
        assert await stores[0].integrity_problems() == ["ok"]
    finally:
        for s in stores:
            await s.close()


# -- lexical: the same ranking as SQLite's FTS5 -------------------------------------------------

CORPUS = {
    "ann": [
        ("I like running in the yellow park", "", "dm", "fact"),
        ("she runs every morning, runs fast", "I like running", "dm", "exchange"),
        ("yes, the park is yellow in autumn", "", "guild:1", "fact"),
        ("green tea and running shoes", "she runs every morning", "guild:1", "note"),
        ("Café crème at the café in Zürich", "", "dm", "fact"),
        ("東京 で 走る", "", "dm", "fact"),
        ("generously generalised generators", "", "dm", "fact"),
    ],
    "bob": [
        ("bob likes running too", "", "dm", "fact"),
        ("yellow yellow yellow submarine", "", "dm", "fact"),
        ("a very long memory " + "about tea and parks " * 20, "", "dm", "fact"),
    ],
}
QUERIES = [
    ("ann", "running yellow park", None, None),
    ("ann", "runs", None, None),
    ("ann", "yes yellow autumn tea", None, ["guild:1"]),
    ("ann", "running shoes morning", ["fact", "note"], None),
    ("ann", "café zurich", None, None),
    ("ann", "東京", None, None),
    ("ann", "generous generator general", None, ["dm"]),
    ("bob", "yellow tea running", None, None),
    ("bob", "nothing matches this", None, None),
    ("ann", "running park " + " ".join(f"word{i}" for i in range(70)), None, None),  # past MAX_QUERY_TERMS
]


@pytest.fixture
async def both(tmp_path: Path, postgres_url: str) -> AsyncIterator[tuple[SqliteStore, PostgresStore]]:
    """The two backends, empty, to be given the same units."""
    lite = SqliteStore(tmp_path / "memory.db")
    await lite.open()
    pg = PostgresStore(postgres_url, vector_dim=4)
    await pg.open()
    yield lite, pg
    await pg.close()
    await lite.close()


async def submit_both(stores: tuple[SqliteStore, PostgresStore], unit: Unit) -> None:
    outcomes = [await s.submit(unit) for s in stores]
    assert outcomes == [COMMITTED, COMMITTED]


async def test_lexical_search_ranks_exactly_as_sqlite(both: tuple[SqliteStore, PostgresStore]) -> None:
    lite, pg = both
    ids: dict[str, list[int]] = {}
    for uid, rows in CORPUS.items():
        ids[uid] = await pg.reserve_memory_ids(len(rows))
        news = tuple(
            NewMemory(memory(mid, uid, body, kind=kind, scope=scope), body, context_words, None)
            for mid, (body, context_words, scope, kind) in zip(ids[uid], rows, strict=True)
        )
        await submit_both(both, Unit(uid, None, memories=news))

    async def compare() -> int:
        compared = 0
        for uid, text, kinds, scopes in QUERIES:
            terms = query_terms(uid, text)
            for weight in (1.0, 0.35):
                want = await lite.lexical_search(uid, terms, 50, kinds, weight, scopes)
                got = await pg.lexical_search(uid, terms, 50, kinds, weight, scopes)
                assert [m for m, _ in got] == [m for m, _ in want], (uid, text, weight)
                assert np.allclose([s for _, s in got], [s for _, s in want], rtol=1e-9, atol=1e-9)
                compared += len(got)
        return compared

    assert await compare() > 30
    # Edits, new context words, a forgotten turn (its next one loses its context words), a
    # forgotten user: the table's totals move with every one, in both.
    a = ids["ann"]
    body = CORPUS["ann"][1][0]
    edit = MemoryEdit(memory(a[1], "ann", body), body, ((a[3], "tea tea tea"),))
    await submit_both(both, Unit("ann", None, edits=(edit,)))
    [late] = await pg.reserve_memory_ids(1)
    await submit_both(
        both, Unit("ann", None, memories=(new(memory(late, "ann", "x park"), "running", a[0]),))
    )
    await submit_both(both, Unit("ann", None, forget_ids=(a[0],)))
    await submit_both(both, Unit("bob", 0, forget_user=True))
    assert await compare() > 15
    assert await pg.integrity_problems() == ["ok"]


# -- coherence: NOTIFY / LISTEN ---------------------------------------------------------------


class Heard:
    """What a store's change listener was called with, and an event per call."""

    def __init__(self) -> None:
        self.calls: list[Sequence[str] | None] = []
        self.event = asyncio.Event()

    def __call__(self, users: Sequence[str] | None) -> None:
        self.calls.append(None if users is None else sorted(users))
        self.event.set()

    async def next(self) -> Sequence[str] | None:
        await asyncio.wait_for(self.event.wait(), 10)
        self.event.clear()
        return self.calls[-1]


async def test_notify_reaches_the_other_store_once_per_batch(postgres_url: str) -> None:
    a, b = await opened(postgres_url), await opened(postgres_url)
    heard_a, heard_b = Heard(), Heard()
    a.listen(heard_a)
    b.listen(heard_b)
    try:
        for s in (a, b):
            assert s.feed is not None
            await asyncio.wait_for(s.feed.connected.wait(), 10)
        # Three users' units queued at once: one batch, one transaction, one notification.
        await asyncio.gather(*(bump(a, uid, 0) for uid in ("u1", "u2", "u3")))
        assert a.stats()["batches"] == 1
        assert await heard_b.next() == ["u1", "u2", "u3"]
        # Embeddings only: nothing cached changed, nothing is sent.
        [mid] = await a.reserve_memory_ids(1)
        await a.submit(Unit("u1", 1, memories=(new(memory(mid, "u1", "hello")),)))
        assert await heard_b.next() == ["u1"]
        await a.submit(Unit("u1", 1, embeddings=((mid, vector(1, 2, 3, 4)),)))
        await bump(b, "u9", 0)  # b's own change: a hears it, b does not
        assert await heard_a.next() == ["u9"]
        assert heard_b.calls == [["u1", "u2", "u3"], ["u1"]]
        assert heard_a.calls == [["u9"]]
    finally:
        await a.close()
        await b.close()


async def test_a_lost_listen_connection_reconnects_and_asks_for_revalidation(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await opened(postgres_url), await opened(postgres_url)
    heard = Heard()
    b.listen(heard)
    assert b.feed is not None
    try:
        await asyncio.wait_for(b.feed.connected.wait(), 10)
        admin = await asyncpg.connect(postgres_url)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                f"memory-bot listener {b.token}",
            )
        finally:
            await admin.close()
        assert killed == 1
        with caplog.at_level(logging.INFO, logger="memory.storage.postgres_notify"):
            assert await heard.next() is None  # back: revalidate everything
        assert b.feed.reconnects == 1
        assert sum("lost" in r.getMessage() for r in caplog.records) == 1
        await bump(a, "u1", 0)
        assert await heard.next() == ["u1"]
    finally:
        await a.close()
        await b.close()


def test_large_batches_split_their_notification_under_the_payload_limit() -> None:
    users = [f"user-{i:05d}-{'x' * 40}" for i in range(400)]
    payloads = notify_payloads("tok", users)
    assert len(payloads) > 1
    assert all(len(p.encode()) < 8000 for p in payloads)
    assert [u for p in payloads for u in orjson.loads(p)["u"]] == users


# -- embeddings: claims, dense search ------------------------------------------------------------


async def test_claimed_rows_are_claimed_again_after_the_lease(postgres_url: str) -> None:
    lease = 1.0
    a, b = await opened(postgres_url, claim_lease=lease), await opened(postgres_url, claim_lease=lease)
    try:
        ids = await a.reserve_memory_ids(3)
        rows = tuple(new(memory(mid, "ann", f"note {mid}")) for mid in ids)
        await a.submit(Unit("ann", None, memories=rows))
        claimed_at = asyncio.get_running_loop().time()
        assert await b.unembedded() == []  # leased to a, which wrote them
        assert [m.id for m in await a.unembedded()] == ids  # a's own; a embeds one, then "crashes"
        await a.submit(Unit("ann", None, embeddings=((ids[0], vector(1, 0, 0, 0)),)))
        assert await b.unembedded() == []
        # After the lease, b claims what a left unembedded (never the embedded one).
        while not (got := await b.unembedded()):
            assert asyncio.get_running_loop().time() - claimed_at < lease + 10
            await asyncio.sleep(0.1)
        assert asyncio.get_running_loop().time() - claimed_at >= lease * 0.9
        assert [m.id for m in got] == ids[1:]
        assert await a.unembedded() == []  # b's now
        # An edit drops the vector: the row waits again, leased to the editor.
        edited = memory(ids[0], "ann", "changed")
        await b.submit(Unit("ann", None, edits=(MemoryEdit(edited, edited.text),)))
        assert await a.unembedded() == []
        assert [m.id for m in await b.unembedded()] == ids
    finally:
        await a.close()
        await b.close()


async def test_a_store_closed_cleanly_leaves_its_rows_to_others_at_once(postgres_url: str) -> None:
    a, b = await opened(postgres_url), await opened(postgres_url)  # leases of a minute
    try:
        ids = await a.reserve_memory_ids(2)
        await a.submit(Unit("ann", None, memories=tuple(new(memory(mid, "ann", "words")) for mid in ids)))
        assert await b.unembedded() == []
        await a.close()
        assert [m.id for m in await b.unembedded()] == ids
    finally:
        await a.close()
        await b.close()


async def test_dense_search_is_an_exact_scan_of_the_users_rows(store: PostgresStore) -> None:
    ids = await store.reserve_memory_ids(5)
    vecs = [
        vector(1, 0, 0, 0),
        vector(1, 1, 0, 0),
        vector(0, 1, 0, 0),
        vector(0, 0, 1, 0),
        vector(1, 0, 0, 0.1),
    ]
    owners = ["ann", "ann", "ann", "ann", "bob"]
    scopes = ["dm", "guild:1", "dm", "dm", "dm"]
    for mid, uid, scope in zip(ids, owners, scopes, strict=True):
        await store.submit(Unit(uid, None, memories=(new(memory(mid, uid, "m", scope=scope)),)))
    for mid, uid, vec in [*list(zip(ids, owners, vecs, strict=True))[:3], (ids[4], "bob", vecs[4])]:
        await store.submit(Unit(uid, None, embeddings=((mid, vec),)))
    query = vector(1, 0.2, 0, 0)
    q = np.frombuffer(query, np.float32)
    expected = sorted(
        (
            (mid, float(np.dot(q, np.frombuffer(v, np.float32))))
            for mid, v in zip(ids[:3], vecs[:3], strict=True)
        ),
        key=lambda item: -item[1],
    )
    got = await store.dense_search("ann", query, 10)
    assert [m for m, _ in got] == [m for m, _ in expected]  # never bob's, never the unembedded one
    assert np.allclose([s for _, s in got], [s for _, s in expected], atol=1e-6)
    assert [m for m, _ in await store.dense_search("ann", query, 10, scopes=["dm"])] == [ids[0], ids[2]]
    assert [m for m, _ in await store.dense_search("ann", query, 1)] == [expected[0][0]]
    scores = await store.dense_scores("ann", query, [ids[1], ids[3], ids[4]])
    assert list(scores) == [ids[1]]
    assert abs(scores[ids[1]] - dict(expected)[ids[1]]) < 1e-6
    await store.set_embedding_model("model-a")
    assert await store.embedding_watermark() == (4, ids[4])  # the first model named keeps them
    await store.set_embedding_model("model-b")
    assert await store.embedding_watermark() == (0, 0)
    assert await store.get_meta("embedding_model") == "model-b"


# -- reads in one snapshot, errors, the URL's password ----------------------------------------------


async def test_consistent_reads_see_one_snapshot_and_cannot_write(store: PostgresStore) -> None:
    await bump(store, "ann", 0)
    async with store.consistent_reads():
        before = await store.count("contexts")
        await bump(store, "bob", 0)  # committed by the writer meanwhile
        assert await store.count("contexts") == before == 1
        assert await store.context_versions(["bob"]) == {}
    assert await store.count("contexts") == 2


def test_the_location_never_shows_the_password() -> None:
    url = "postgresql://bot:s3cr%40t@db.example:5432/memory?sslmode=require&password=other"
    assert (
        PostgresStore(url).location
        == "postgresql://bot:***@db.example:5432/memory?sslmode=require&password=***"
    )
    local = "postgresql://postgres@/db?host=/tmp/s&port=5432"
    assert PostgresStore(local).location == local


async def test_a_server_that_is_not_there_says_what_to_do(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    url = "postgresql://bot:hunter2@/memory?host=/nonexistent-socket-dir&port=5999"
    s = PostgresStore(url)
    with pytest.raises(StorageError) as caught:
        await s.open()
    message = str(caught.value)
    assert "make postgres" in message
    assert "hunter2" not in message and "***" in message
    assert "hunter2" not in caplog.text


async def test_a_missing_database_says_what_to_do(postgres_url: str) -> None:
    url = postgres_url.replace("/test_", "/absent_", 1)
    with pytest.raises(StorageError, match="create the database") as caught:
        await PostgresStore(url).open()
    assert "absent_" in str(caught.value)


async def test_a_database_without_pgvector_says_what_to_do(
    make_postgres_database: Callable[[], str],
) -> None:
    url = make_postgres_database()
    admin = await asyncpg.connect(url)
    try:
        await admin.execute("DROP EXTENSION vector")
        # Not a superuser, and not allowed to create extensions: as on a server without pgvector.
        name = await admin.fetchval("SELECT current_database()")
        await admin.execute(f'REVOKE CREATE ON DATABASE "{name}" FROM PUBLIC')
        await admin.execute(f'CREATE ROLE "plain_{name}" LOGIN')
        await admin.execute(f'GRANT ALL ON SCHEMA public TO "plain_{name}"')
    finally:
        await admin.close()
    s = PostgresStore(url.replace("postgres@", f"plain_{name}@"))
    with pytest.raises(StorageError, match="pgvector"):
        await s.open()


# -- the protocol, bad units, a lost writer connection, read-only ---------------------------------


def test_the_store_implements_the_protocol() -> None:
    def as_store(s: PostgresStore) -> Store:  # mypy checks every method's signature here
        return s

    s = PostgresStore("postgresql://x@/y")
    assert as_store(s).shared is True
    assert isinstance(s, DenseSearch)


async def test_one_bad_unit_fails_alone_and_its_batch_commits(store: PostgresStore) -> None:
    [mid] = await store.reserve_memory_ids(1)
    bad = Unit("bad", 0, write(context("bad", 1)), (new(memory(mid, "bad", "a NUL \x00 in the text")),))
    futures = [store.submit(Unit(f"u{i}", 0, write(context(f"u{i}", 1)))) for i in range(3)]
    futures.insert(1, store.submit(bad))
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert [o == COMMITTED for o in outcomes] == [True, False, True, True]
    assert isinstance(outcomes[1], StorageError)
    assert "could not commit" in str(outcomes[1])
    assert await store.context_versions(["u0", "bad", "u1", "u2"]) == {"u0": 1, "u1": 1, "u2": 1}
    assert await store.memories("bad") == []


async def test_after_losing_its_connection_the_writer_reconnects(
    store: PostgresStore, postgres_url: str
) -> None:
    assert await bump(store, "ann", 0) == COMMITTED
    admin = await asyncpg.connect(postgres_url)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            f"memory-bot writer {store.token}",
        )
    finally:
        await admin.close()
    assert killed == 1
    with pytest.raises(StorageError, match="may or may not have been written"):
        await bump(store, "ann", 1)
    outcome = await bump(store, "ann", 1)  # it was not written: the server never saw it
    assert outcome == COMMITTED
    assert await store.context_versions(["ann"]) == {"ann": 2}


async def test_a_read_only_store_reads_and_cannot_write(store: PostgresStore, postgres_url: str) -> None:
    await bump(store, "ann", 0)
    reader = PostgresStore(postgres_url, vector_dim=4, readonly=True)
    await reader.open()
    try:
        assert await reader.context_versions(["ann"]) == {"ann": 1}
        with pytest.raises(SystemClosedError):
            reader.submit(Unit("ann", 1, write(context("ann", 2))))
    finally:
        await reader.close()


async def test_every_acknowledged_unit_survives_a_server_crash(
    postgres_url: str, restart_postgres: Callable[[], None]
) -> None:
    s = await opened(postgres_url)
    try:
        outcomes = await asyncio.gather(*(bump(s, f"u{i}", 0, i) for i in range(200)))
        assert outcomes == [COMMITTED] * 200
        await asyncio.to_thread(restart_postgres)  # pg_ctl stop -m immediate, then start
        with pytest.raises(StorageError):  # the writer's connection died with the server
            await bump(s, "late", 0)
        assert await bump(s, "late", 0) == COMMITTED  # ... and was made again
        assert await s.context_versions(["u7"]) == {"u7": 1}  # the pool's dead ones, too
    finally:
        await s.close()
    after = await opened(postgres_url)
    try:
        versions = await after.context_versions([f"u{i}" for i in range(200)] + ["late"])
        assert versions == {**{f"u{i}": 1 for i in range(200)}, "late": 1}
    finally:
        await after.close()


async def test_every_read_returns_what_sqlite_returns(both: tuple[SqliteStore, PostgresStore]) -> None:
    lite, pg = both
    ids = await pg.reserve_memory_ids(8)
    day = timedelta(days=1)
    plan = [  # (user, text, scope, kind, source, previous turn)
        ("ann", "first words", "dm", "exchange", "m1", None),
        ("ann", "second words", "dm", "exchange", "m2", 0),
        ("ann", "a fact in a guild", "guild:2", "fact", None, None),
        ("bob", "bob's note", "guild:2", "note", "m3", None),
        ("bob", "bob again", "dm", "exchange", "m3", None),
        ("ann", "third words", "guild:1", "exchange", None, 1),
        ("cy", "cy speaks", "dm", "fact", None, None),
        ("ann", "fourth", "dm", "note", "m9", None),
    ]
    versions: dict[str, int] = {}
    for i, (uid, text, scope, kind, source, prev) in enumerate(plan):
        version = versions.get(uid, 0)
        m = memory(ids[i], uid, text, kind=kind, scope=scope, source_id=source, created_at=T0 + i * day)
        link = None if prev is None else ids[prev]
        ctx = context(uid, version + 1, version + 1, uid.title())
        unit = Unit(uid, version, write(ctx, at=T0 + i * day), (new(m, "earlier" if link else "", link),))
        await submit_both(both, unit)
        versions[uid] = version + 1
    edited = memory(
        ids[1], "ann", "second words, edited", kind="exchange", source_id="m2", created_at=T0 + day
    )
    await submit_both(
        both,
        Unit(
            "ann",
            versions["ann"],
            write(context("ann", versions["ann"] + 1, 9, "Ann"), at=T0 + 9 * day),
            forget_ids=(ids[0],),
            edits=(MemoryEdit(edited, edited.text),),
            redactions=((2, '{"gone": 1}'),),
            compact_before=T0 + 2 * day,
            erasure=ErasureNote(T0 + 9 * day, "ann", "memory", 1),
            embeddings=((ids[2], vector(1, 2, 3, 4)), (ids[5], vector(4, 3, 2, 1))),
        ),
    )
    await submit_both(both, Unit("bob", None, embeddings=((ids[3], vector(0, 1, 0, 0)),)))
    users = ["ann", "bob", "cy", "nobody"]
    all_ids = [*ids, 10**9]

    async def reads(s: SqliteStore | PostgresStore) -> list[object]:
        out: list[object] = [
            await s.load_contexts(),
            await s.context_versions(users),
            await s.memory_counts(),
            await s.erasures(),
            await s.users_with_history_before(T0 + 3 * day),
            await s.memories_by_id(all_ids),
            await s.memories_by_source("m3"),
            await s.memories_in_scope("guild:2"),
            await s.memories_in_scope("dm", "ann"),
            await s.memories_before(T0 + 6 * day, ["exchange", "note"]),
            await s.memories_before(T0 + 6 * day, ["exchange"], "ann"),
            await s.session_neighbours(all_ids),
            await s.embedding_watermark(),
            sorted(await s.embedded_ids()),
            await s.embeddings_for(all_ids),
            await s.unembedded(),
            [await s.count(t) for t in ("contexts", "context_history", "memories")],
        ]
        for uid in users:
            out += [
                await s.context_data(uid),
                await s.stored_version(uid),
                await s.history(uid),
                await s.history_entry(uid, 1),
                await s.history_since(uid, T0 + 4 * day),
                await s.version_count(uid),
                await s.erasures(uid),
                await s.memories(uid),
                await s.memories(uid, limit=2, offset=1),
                await s.memories(uid, kinds=["exchange"], scopes=["dm", "guild:1"]),
                sorted(await s.memory_ids(uid)),
                await s.scoped_ids(uid, ["guild:2", "guild:1", "dm"]),
                await s.scopes_of(uid),
                await s.count_memories(uid),
                await s.last_memory(uid),
            ]
        return out

    lite_reads, pg_reads = await reads(lite), await reads(pg)
    for n, (want, got) in enumerate(zip(lite_reads, pg_reads, strict=True)):
        assert got == want, n


def test_stems_stay_right_when_the_stem_cache_is_full() -> None:
    tokens = user_terms("ann", "running runs ran yellow yes generously running").split()
    expected = Stemmer().stems(tokens)
    small = Stemmer(limit=4)
    assert small.stems(tokens[:3]) == expected[:3]
    assert small.stems(tokens) == expected  # more than the cache holds, some of them cached
    assert expected[0] == expected[1] == expected[6] != expected[2]  # porter: run, run, ran
