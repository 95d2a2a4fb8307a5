"""Start-up and read-your-writes under load, as ratios to a bare ``import sentence_transformers``.

Run: ``.venv/bin/python benchmarks/bench_start.py [--quick] [--out FILE]``

Every figure that is a time is divided by the wall time of ``python -c "import
sentence_transformers"`` measured in the same run, so a busy machine slows both sides alike:
- start-to-ready of the contexts (``start()`` returned) and of the model and the index
  (``wait_ready()``), the first acknowledged ``update_context`` from process start, on an empty
  folder and with N memories (100k; 10k with --quick), the first ``retrieve_memory`` that used
  the dense ranker, and when the integrity check that runs after start was done;
- ``memory-admin forget`` on the big folder;
- RSS after start with N memories, before and after the model is loaded;
- with the shipped model: after some seconds of 100 callers updating (5 s; 2 s with --quick), one
  ``retrieve_memory`` for a user who just talked, as a multiple of an idle retrieve, and the
  embedder's texts/s against one batched model call of the same texts.

Each start is a fresh process (it is what is measured); the load test runs in a child that is
killed when it has reported (its backlog stays durable and unembedded, as after any stop).
The CPU's instruction set is in the result: bfloat16 figures hold only where the CPU has BF16.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import log, met, run_benchmark, temp_data_dir

from memory import HashingEncoder, MemorySystem, load_settings
from memory.cpu import has_native_bfloat16, int8_instruction_set
from memory.encoder import effective_precision, encoder_name

ROOT = Path(__file__).resolve().parents[1]

# A fresh process: time from its start (the parent's clock before spawning) to each event.
START_PROBE = """
import asyncio, json, sys, time
t0 = float(sys.argv[2])
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
from memory import MemorySystem, load_settings
async def main():
    out = {}
    async with MemorySystem(sys.argv[1], settings=load_settings(environ={})) as ms:
        out["started"] = time.time() - t0
        await ms.update_context("probe", "hello, I just moved to Lyon", "welcome!")
        out["first_update"] = time.time() - t0
        out["rss_mb_started"] = rss()
        assert await ms.wait_ready(), (await ms.stats())["encoder_error"]
        out["model_ready"] = time.time() - t0
        found = await ms.retrieve_memory("probe", "where do I live?")
        out["first_dense_retrieve"] = time.time() - t0
        out["dense"] = "dense" in found[0].rankers
        out["rss_mb_model"] = rss()
        out["integrity_check"] = await ms.integrity_checked()  # runs after start, off its path
        out["integrity_checked"] = time.time() - t0
    print("RESULT=" + json.dumps(out), flush=True)
asyncio.run(main())
"""

LOAD_PROBE = """
import asyncio, json, sys, time
from memory import MemorySystem, load_settings
from memory.encoder import build_encoder
SECONDS = float(sys.argv[2])
async def main():
    settings = load_settings(environ={})
    async with MemorySystem(sys.argv[1], settings=settings) as ms:
        assert await ms.wait_ready()
        for i in range(20):
            await ms.update_context("asker", f"my cat number {i} likes tuna", "noted")
        await ms.retrieve_memory("asker", "warm up")
        idle = []
        for i in range(20):
            started = time.perf_counter()
            await ms.retrieve_memory("asker", "what does my cat like?")
            idle.append(time.perf_counter() - started)
        stop = time.perf_counter() + SECONDS
        updates = 0
        async def caller(n):
            nonlocal updates
            i = 0
            while time.perf_counter() < stop:
                await ms.update_context(f"user{n}", f"talking about topic {i} with the bot", "ok")
                updates += 1
                i += 1
        await asyncio.gather(*(caller(n) for n in range(100)))
        await ms.update_context("asker", "my dog is called Rex", "nice")
        pending = (await ms.stats())["pending_embeddings"]
        started = time.perf_counter()
        found = await ms.retrieve_memory("asker", "what is my dog called?")
        loaded = time.perf_counter() - started
        stats = await ms.stats()
        texts = [f"talking about topic {i} with the bot" for i in range(256)]
        encoder = await build_encoder(settings.encoder)
        await encoder.encode(texts)
        started = time.perf_counter()
        await encoder.encode(texts)
        batched = len(texts) / (time.perf_counter() - started)
        await encoder.close()
        print("RESULT=" + json.dumps({
            "updates_per_second": updates / SECONDS,
            "pending_at_query": pending,
            "idle_retrieve_ms": sorted(idle)[len(idle) // 2] * 1000,
            "loaded_retrieve_ms": loaded * 1000,
            "found_own_memory": "Rex" in found[0].memory.text,
            "rankers": list(found[0].rankers),
            "embedder_texts_per_second": stats["embedder_texts_per_second"],
            "one_batched_call_texts_per_second": batched,
        }), flush=True)
    # (the parent kills this process once it has printed: the backlog stays durable)
asyncio.run(main())
"""


def child(code: str, *args: str, timeout: float = 1800) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter and return its RESULT line (killed once it printed)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            if line.startswith("RESULT="):
                result: dict[str, Any] = json.loads(line.removeprefix("RESULT="))
                return result
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"the probe ended without a result (exit {proc.poll()})")
    finally:
        proc.kill()
        proc.wait()


def wall(*argv: str) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - started


def import_seconds() -> float:
    return statistics.median(wall(sys.executable, "-c", "import sentence_transformers") for _ in range(3))


class RealNamedEncoder(HashingEncoder):
    """Fills the big folder fast: hashing vectors under the real model's name (no re-embed)."""

    @property
    def name(self) -> str:
        return encoder_name(load_settings(environ={}).encoder)


async def populate(folder: Path, count: int) -> None:
    settings = load_settings(environ={})
    async with MemorySystem(folder, settings=settings, encoder=RealNamedEncoder()) as ms:

        async def writer(n: int) -> None:
            for i in range(n, count, 50):
                await ms.save_memory(f"user{i % 1000}", f"memory {i}: a note about thing {i % 977}")

        await asyncio.gather(*(writer(n) for n in range(50)))


def start_probe(folder: Path) -> dict[str, Any]:
    return child(START_PROBE, str(folder), repr(time.time()))


async def run(quick: bool, seed: int) -> dict[str, Any]:
    count = 10_000 if quick else 100_000
    settings = load_settings(environ={})
    result: dict[str, Any] = {
        "command": "benchmarks/bench_start.py" + (" --quick" if quick else ""),
        "cpu": {
            "bf16": has_native_bfloat16(),
            "int8_instruction_set": int8_instruction_set(),
            "precision": effective_precision(settings.encoder),
        },
        "memories": count,
    }
    log("timing a bare `import sentence_transformers`")
    base = import_seconds()
    result["import_sentence_transformers_s"] = round(base, 2)
    with temp_data_dir("bench-start-") as root:
        log("start on an empty folder")
        empty = start_probe(root / "empty")
        log(f"populating {count} memories")
        await populate(root / "big", count)
        log("start with the big folder")
        big = start_probe(root / "big")
        log("memory-admin forget")
        big_dir = str(root / "big")
        forget = wall(sys.executable, "-m", "memory.admin", "forget", "user7", "--yes", "--data-dir", big_dir)
        log("100 callers against the real model")
        load = child(LOAD_PROBE, str(root / "load"), "2" if quick else "5")
    result["empty"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in empty.items()}
    result["big"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in big.items()}
    result["forget_s"] = round(forget, 2)
    result["load"] = {k: round(v, 2) if isinstance(v, float) else v for k, v in load.items()}
    result["ratios"] = {
        "empty_contexts_ready": round(empty["started"] / base, 3),
        "big_contexts_ready": round(big["started"] / base, 3),
        "empty_model_ready": round(empty["model_ready"] / base, 3),
        "big_model_ready": round(big["model_ready"] / base, 3),
        "empty_first_update": round(empty["first_update"] / base, 3),
        "big_first_update": round(big["first_update"] / base, 3),
        "empty_first_dense_retrieve": round(empty["first_dense_retrieve"] / base, 3),
        "big_first_dense_retrieve": round(big["first_dense_retrieve"] / base, 3),
        "forget": round(forget / base, 3),
        "retrieve_under_load_vs_idle": round(load["loaded_retrieve_ms"] / load["idle_retrieve_ms"], 2),
        "embedder_vs_one_batched_call": round(
            (load["embedder_texts_per_second"] or 0) / load["one_batched_call_texts_per_second"], 3
        ),
    }
    return result


def finish(result: dict[str, Any], quick: bool) -> dict[str, Any]:
    r = result["ratios"]
    return {
        "targets": {
            "empty_first_update <= 0.15": met(r["empty_first_update"], 0.15),
            "big_first_update <= 0.3": met(r["big_first_update"], 0.3),
            "empty_first_dense_retrieve <= 1.2": met(r["empty_first_dense_retrieve"], 1.2),
            "big_first_dense_retrieve <= 1.2": met(r["big_first_dense_retrieve"], 1.2),
            "forget <= 0.2": met(r["forget"], 0.2),
            "retrieve_under_load_vs_idle <= 3": met(r["retrieve_under_load_vs_idle"], 3.0),
        }
    }


if __name__ == "__main__":
    run_benchmark("start", __doc__ or "", run, finish)
