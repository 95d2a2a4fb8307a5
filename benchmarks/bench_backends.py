"""Per-user retrieval on both backends side by side: SQLite + FAISS against PostgreSQL + pgvector.

Run: ``.venv/bin/python benchmarks/bench_backends.py [--quick] [--out FILE]``. The same 100k
memories of 1,000 users (10k of 200 with --quick) go into each backend through ``MemorySystem``
(the deterministic hashing encoder, 384 dimensions, so the model's cost is not what is measured),
then the same queries are asked of each, interleaved (one SQLite query, one PostgreSQL query) so
that the machine's load falls on both alike. Reported per backend: ``retrieve_memory`` p50/p99,
and the search part alone (the dense top k and the lexical top k for one user: FAISS's
``search_scored`` and the FTS5 query for SQLite, the pgvector scan and the tsvector query for
PostgreSQL), plus the ratio PostgreSQL / SQLite of each p50.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

from _common import emit, load_average, log, machine, parse_args, summarise, temp_data_dir

from memory import HashingEncoder, MemorySystem, load_settings
from memory.cpu import int8_instruction_set
from memory.lexical import query_terms
from memory.storage.pgcluster import LocalCluster
from memory.storage.postgres import PostgresStore

WORDS = (
    "garden tomato river guitar purple rocket coffee winter mountain violin harbour lantern "
    "pepper meadow comet marble orchard saddle tunnel velvet walnut canyon falcon"
).split()
CALLERS = 100
CANDIDATES = 60


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))


def _system(folder: Path, storage: dict[str, Any]) -> MemorySystem:
    settings = load_settings(
        environ={}, overrides={"storage": storage, "encoder": {"kind": "hashing", "ready_wait_ms": 600_000.0}}
    )
    return MemorySystem(folder, settings=settings, encoder=HashingEncoder())


async def _fill(ms: MemorySystem, users: int, per_user: int, seed: int) -> float:
    rng = random.Random(seed)
    work = [(f"user-{u}", _text(rng)) for u in range(users) for _ in range(per_user)]
    started = time.perf_counter()

    async def caller(offset: int) -> None:
        for uid, text in work[offset::CALLERS]:
            await ms.save_memory(uid, text)

    await asyncio.gather(*(caller(n) for n in range(CALLERS)))
    for u in range(users):  # until every user's memories are embedded
        await ms.retrieve_memory(f"user-{u}", "settle")
    return time.perf_counter() - started


async def _search_part(ms: MemorySystem, uid: str, query: str) -> float:
    """Seconds for the two per-user searches alone (what the backend does for a retrieve)."""
    store = ms._store  # internal: the search part, timed on its own (read-only use)
    vector = (await HashingEncoder().encode([query]))[0]
    terms = query_terms(uid, query)
    started = time.perf_counter()
    if isinstance(store, PostgresStore):
        await store.dense_search(uid, vector.tobytes(), CANDIDATES)
    else:
        index = ms._semantic._index
        assert index is not None
        await ms._semantic._faiss.run(index.search_scored, uid, vector, CANDIDATES)
    await store.lexical_search(uid, terms, CANDIDATES * 2)
    return time.perf_counter() - started


async def run(quick: bool, seed: int) -> dict[str, Any]:
    users, per_user, queries = (200, 50, 200) if quick else (1000, 100, 1000)
    with temp_data_dir("bench-backends-") as folder:
        pg_folder = folder / "pg"
        pg_folder.mkdir()
        pg_folder.chmod(0o755)
        folder.chmod(0o755)
        cluster = LocalCluster(pg_folder)
        cluster.init()
        cluster.start()
        try:
            url = cluster.url()
            backends = {
                "sqlite": _system(folder / "sqlite", {}),
                "postgres": _system(folder / "unused", {"backend": "postgres", "postgres_url": url}),
            }
            fill: dict[str, float] = {}
            for name, ms in backends.items():
                await ms.start()
                log(f"{name}: filling {users * per_user} memories")
                fill[name] = await _fill(ms, users, per_user, seed)
            rng = random.Random(seed + 1)
            asks = [(f"user-{rng.randrange(users)}", _text(rng)[:40]) for _ in range(queries)]
            retrieve: dict[str, list[float]] = {name: [] for name in backends}
            search: dict[str, list[float]] = {name: [] for name in backends}
            for uid, query in asks:
                for name, ms in backends.items():  # interleaved: the same load on both
                    started = time.perf_counter()
                    await ms.retrieve_memory(uid, query, k=10)
                    retrieve[name].append(time.perf_counter() - started)
                    search[name].append(await _search_part(ms, uid, query))
            for ms in backends.values():
                await ms.close()
        finally:
            cluster.stop("fast")
    result: dict[str, Any] = {
        "benchmark": "backends",
        "quick": quick,
        "machine": machine(),
        "instruction_set": int8_instruction_set(),
        "loadavg": load_average(),
        "memories": users * per_user,
        "users": users,
        "queries": queries,
        "fill_seconds": {k: round(v, 1) for k, v in fill.items()},
    }
    for name in backends:
        result[name] = {
            "retrieve_ms": summarise(retrieve[name], scale=1000),
            "search_part_ms": summarise(search[name], scale=1000),
        }
    result["postgres_over_sqlite_p50"] = {
        part: round(result["postgres"][part]["p50"] / result["sqlite"][part]["p50"], 2)
        for part in ("retrieve_ms", "search_part_ms")
    }
    return result


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0] if __doc__ else "")
    emit(asyncio.run(run(args.quick, args.seed)), args.out)


if __name__ == "__main__":
    main()
