"""Read-your-writes under load: a retrieve for a user who just talked, while 100 callers keep
updating, as a multiple of the same retrieve on an idle system (target <= 3).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_read_your_writes.py [--quick] [--out FILE]``

With the shipped model (not the hashing encoder). Idle: the asker says something, then asks
(20 rounds). Loaded: 100 closed-loop callers update their own contexts without a pause for 5 s
(2 s with --quick), so the embedder falls behind by thousands; then, while they go on, the
same 20 rounds. Reported: both p50s and their ratio, the update rate during the loaded rounds,
the backlog the queries met, and how often the asker's new memory was ranked by its vector
(not ``not-embedded``). The CPU's instruction set is in the result (bfloat16 only with BF16).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from _common import log, met, run_benchmark, summarise, temp_data_dir

from memory import MemorySystem, load_settings
from memory.cpu import has_native_bfloat16, int8_instruction_set
from memory.encoder import effective_precision

ROUNDS = 20


async def ask_after_talking(ms: MemorySystem, n: int) -> tuple[float, bool]:
    """The asker says something new, then asks about it: the retrieve's seconds, and whether
    the new memory came back ranked by its vector."""
    await ms.update_context("asker", f"my cat number {n} is called Tom{n}", "noted")
    started = time.perf_counter()
    found = await ms.retrieve_memory("asker", f"what is cat number {n} called?")
    took = time.perf_counter() - started
    mine = [r for r in found if f"Tom{n}" in r.memory.text]
    return took, bool(mine) and "not-embedded" not in mine[0].rankers and "dense" in mine[0].rankers


async def measure(folder: Path, load_seconds: float) -> dict[str, Any]:
    async with MemorySystem(folder, settings=load_settings(environ={})) as ms:
        assert await ms.wait_ready(), (await ms.stats())["encoder_error"]
        for i in range(20):
            await ms.update_context("asker", f"warming up, message {i}", "ok")
        await ms.retrieve_memory("asker", "warm up")
        idle = [await ask_after_talking(ms, n) for n in range(ROUNDS)]
        stop = asyncio.Event()
        updates = 0

        async def caller(n: int) -> None:
            nonlocal updates
            i = 0
            while not stop.is_set():
                await ms.update_context(f"user{n}", f"talking about topic {i} with the bot", "ok")
                updates += 1
                i += 1

        callers = [asyncio.create_task(caller(n)) for n in range(100)]
        log(f"100 callers updating for {load_seconds:.0f} s")
        await asyncio.sleep(load_seconds)  # the load builds its backlog
        backlog = []
        counted, started = updates, time.perf_counter()
        loaded = []
        for n in range(ROUNDS, 2 * ROUNDS):
            backlog.append((await ms.stats())["pending_embeddings"])
            loaded.append(await ask_after_talking(ms, n))
        rate = (updates - counted) / (time.perf_counter() - started)
        stop.set()
        await asyncio.gather(*callers)
        stats = await ms.stats()
        log("closing (the backlog stays durable for the next start)")
    return {
        "idle_retrieve_ms": summarise([t for t, _ in idle], scale=1000),
        "loaded_retrieve_ms": summarise([t for t, _ in loaded], scale=1000),
        "updates_per_second_while_asking": round(rate),
        "backlog_at_queries": {"min": min(backlog), "max": max(backlog)},
        "own_memory_dense_idle": sum(ok for _, ok in idle) / ROUNDS,
        "own_memory_dense_loaded": sum(ok for _, ok in loaded) / ROUNDS,
        "embedder_texts_per_second": stats["embedder_texts_per_second"],
        "encoder_urgent_batches": stats.get("encoder_urgent_batches"),
    }


async def run(quick: bool, seed: int) -> dict[str, Any]:
    settings = load_settings(environ={})
    with temp_data_dir("bench-ryw-") as root:
        figures = await measure(root / "data", 2.0 if quick else 5.0)
    ratio = figures["loaded_retrieve_ms"]["p50"] / figures["idle_retrieve_ms"]["p50"]
    return {
        "command": "benchmarks/bench_read_your_writes.py" + (" --quick" if quick else ""),
        "cpu": {
            "bf16": has_native_bfloat16(),
            "int8_instruction_set": int8_instruction_set(),
            "precision": effective_precision(settings.encoder),
        },
        **figures,
        "ratios": {"loaded_p50_over_idle_p50": round(ratio, 2)},
    }


def finish(result: dict[str, Any], quick: bool) -> dict[str, Any]:
    return {
        "targets": {
            "loaded_p50_over_idle_p50 <= 3": met(result["ratios"]["loaded_p50_over_idle_p50"], 3.0),
            "own memory ranked by its vector under load (all rounds)": met(
                result["own_memory_dense_loaded"], 1.0, at_least=True
            ),
        }
    }


if __name__ == "__main__":
    run_benchmark("read_your_writes", __doc__ or "", run, finish)
