"""Query cost of each known embedding model, side by side in one run; prints JSON.

Both models are loaded through the shipped encoder (settings as configured: one thread, bf16
only where the CPU has it) and embed the same locomo-dev questions one at a time, alternating
A, B, A, B so that a busy machine weighs on both alike. Per model: CPU milliseconds per query
(every thread of the process, ``time.process_time``) and wall milliseconds (p50, p90). The
CPU's instruction set is named, since bf16 changes the answer several fold.

    .venv/bin/python benchmarks/bench_models.py [--queries N] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from _common import emit, load_average, machine, summarise
from bench_recall import DEFAULT_DATA, load

from memory import EncoderError, load_settings, models
from memory.cpu import cpu_flags
from memory.encoder import Encoder, build_encoder, effective_precision  # internal: the model's cost

SHOWN_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=200, help="questions per model")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    _, questions = load(DEFAULT_DATA, None)
    texts = [q.text for q in questions][: args.queries]
    flags = cpu_flags()
    report: dict[str, Any] = {
        "machine": machine(),
        "cpu_flags": {flag: flag in flags for flag in SHOWN_FLAGS},
        "loadavg_start": load_average(),
        "queries": len(texts),
        "models": {},
    }
    encoders: dict[str, Encoder] = {}
    for spec in models.MODELS:
        settings = load_settings(overrides={"encoder": {"model": spec.setting}}).encoder
        try:
            encoders[spec.name] = await build_encoder(settings)
        except EncoderError as exc:
            report["models"][spec.name] = {"skipped": str(exc)}
            continue
        report["models"][spec.name] = {
            "dim": encoders[spec.name].dim,
            "precision": effective_precision(settings),
        }
    cpu: dict[str, list[float]] = {name: [] for name in encoders}
    wall: dict[str, list[float]] = {name: [] for name in encoders}
    try:
        for text in texts:
            for name, encoder in encoders.items():
                started, used = time.perf_counter(), time.process_time()
                await encoder.encode([text])
                wall[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - used)
    finally:
        for encoder in encoders.values():
            await encoder.close()
    for name in encoders:
        report["models"][name] |= {
            "cpu_ms_per_query": round(1000 * sum(cpu[name]) / len(cpu[name]), 2),
            "wall_ms": summarise(wall[name], scale=1000, digits=2),
        }
    report["loadavg_end"] = load_average()
    emit(report, args.out)


if __name__ == "__main__":
    asyncio.run(main())
