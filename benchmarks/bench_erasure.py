"""Erasure benchmark (issue 9): what a final forget costs, beside an ordinary update.

Run: ``.venv/bin/python benchmarks/bench_erasure.py [--quick] [--out FILE]``. Prints one JSON
object on stdout (progress on stderr). The public API only, with the hashing encoder. A forget
purges FTS5's segments (SQLite before 3.44 has no FTS5 secure-delete, so a full merge) and
empties the WAL before it returns; the cost grows with the database, so it is measured at two
sizes, as CPU time of this process per call (SQLite's threads included: stable on a shared
machine) and as a ratio to an update_context measured in the same run.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

from _common import log, run_benchmark, summarise, temp_data_dir

from memory import HashingEncoder, Memory, MemorySystem, load_settings
from memory.storage.sqlite_connection import sqlite3

WORDS = "pizza coffee hiking chess jazz rain painting guitar soup trains tea cats dogs poetry".split()


async def _populate(ms: MemorySystem, memories: int, users: int, rng: random.Random) -> list[Memory]:
    saved: list[Memory] = []
    batch = 200
    for start in range(0, memories, batch):
        texts = [
            " ".join(rng.choice(WORDS) + str(rng.randrange(5_000)) for _ in range(12))
            for _ in range(min(batch, memories - start))
        ]
        saved += await asyncio.gather(
            *(ms.save_memory(f"user-{(start + i) % users}", text) for i, text in enumerate(texts))
        )
    return saved


def _sizes(data_dir: Path) -> tuple[int, int]:
    wal = data_dir / "memory.db-wal"
    return (data_dir / "memory.db").stat().st_size, wal.stat().st_size if wal.exists() else 0


async def _measure(size: int, forgets: int, rng: random.Random) -> dict[str, Any]:
    settings = load_settings(environ={}, overrides={"encoder": {"kind": "hashing"}})
    with temp_data_dir("bench-erasure-") as data_dir:
        async with MemorySystem(data_dir, settings=settings, encoder=HashingEncoder()) as ms:
            log(f"{size} memories: populating")
            saved = await _populate(ms, size, max(1, size // 100), rng)
            await ms.retrieve_memory("user-0", "pizza")
            updates_cpu, updates_wall = [], []
            for n in range(forgets):
                cpu, wall = time.process_time(), time.perf_counter()
                await ms.update_context(f"user-{n}", "a message of no importance", "ok")
                updates_cpu.append(time.process_time() - cpu)
                updates_wall.append(time.perf_counter() - wall)
            forget_cpu, forget_wall = [], []
            chosen = rng.sample(saved, 2 * forgets)
            for memory in chosen[:forgets]:
                cpu, wall = time.process_time(), time.perf_counter()
                await ms.forget_memory(memory.user_id, memory.id)
                forget_cpu.append(time.process_time() - cpu)
                forget_wall.append(time.perf_counter() - wall)
            log(f"{size} memories: {forgets} concurrent forgets")
            started_cpu = time.process_time()
            await asyncio.gather(*(ms.forget_memory(m.user_id, m.id) for m in chosen[forgets:]))
            concurrent_cpu = (time.process_time() - started_cpu) / forgets
            db_bytes, wal_bytes = _sizes(data_dir)
    mean = sum(forget_cpu) / len(forget_cpu)
    update_mean = sum(updates_cpu) / len(updates_cpu)
    return {
        "memories": size,
        "database_bytes": db_bytes,
        "wal_bytes_after": wal_bytes,
        "forget_memory_cpu_ms": summarise(forget_cpu, scale=1000),
        "forget_memory_wall_ms": summarise(forget_wall, scale=1000),
        "update_context_cpu_ms": summarise(updates_cpu, scale=1000),
        "forget_to_update_cpu_ratio": round(mean / update_mean, 1) if update_mean else None,
        "concurrent_forget_cpu_ms_each": round(concurrent_cpu * 1000, 3),
    }


async def run(quick: bool, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    sizes = (2_000, 10_000) if quick else (10_000, 100_000)
    forgets = 10 if quick else 30
    return {
        "sqlite": sqlite3.sqlite_version,
        "sizes": [await _measure(size, forgets, rng) for size in sizes],
    }


def finish(result: dict[str, Any], quick: bool) -> dict[str, Any]:
    return {}


if __name__ == "__main__":
    run_benchmark("erasure", __doc__.split("\n\n")[0] if __doc__ else "", run, finish)
