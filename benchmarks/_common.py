"""Shared helpers for the benchmark scripts: percentiles, a loop-stall ticker, temp folders, output.

Figures go to stdout as one JSON object; everything else (progress, logs) goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

_STARTED = time.perf_counter()


def log(message: str) -> None:
    """A progress line on stderr, stamped with the seconds since the script started."""
    print(f"[{time.perf_counter() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a smaller run (< 60 s), for smoke tests")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.add_argument("--seed", type=int, default=1234, help="random seed of the synthetic data")
    return parser.parse_args()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def summarise(samples: Sequence[float], *, scale: float = 1.0, digits: int = 3) -> dict[str, Any]:
    """n, mean, p50, p90, p99, p99.9 and max of ``samples`` multiplied by ``scale``."""
    values = sorted(v * scale for v in samples)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "mean": round(sum(values) / len(values), digits),
        "p50": round(percentile(values, 50), digits),
        "p90": round(percentile(values, 90), digits),
        "p99": round(percentile(values, 99), digits),
        "p99_9": round(percentile(values, 99.9), digits),
        "max": round(values[-1], digits),
    }


class StallTicker:
    """Sleeps ``period`` in a loop on the event loop and records how late each wake-up was.

    A wake-up later than the period by X means the loop was blocked (or busy) for about X:
    ``max_stall_ms`` is the longest such gap while the ticker ran.
    """

    def __init__(self, period: float = 0.001) -> None:
        self.period = period
        self.max_stall = 0.0
        self.ticks = 0
        self.stalls_over_10ms = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(self.period)
            now = time.perf_counter()
            stall = now - last - self.period
            self.ticks += 1
            self.max_stall = max(self.max_stall, stall)
            if stall > 0.010:
                self.stalls_over_10ms += 1
            last = now

    def start(self) -> None:
        self.max_stall = 0.0
        self.ticks = 0
        self.stalls_over_10ms = 0
        self._task = asyncio.create_task(self._run(), name="bench stall ticker")

    async def stop(self) -> dict[str, Any]:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        return {
            "max_stall_ms": round(self.max_stall * 1000, 3),
            "ticks": self.ticks,
            "stalls_over_10ms": self.stalls_over_10ms,
        }


async def drain_embeddings(ms: Any, timeout: float = 60.0) -> float:
    """Seconds until the write-behind embedder has caught up (public stats); ``close()`` no
    longer waits for it, so a benchmark that needs every vector waits here."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if not (await ms.stats())["pending_embeddings"]:
            break
        await asyncio.sleep(0.05)
    return round(time.perf_counter() - started, 3)


@contextmanager
def temp_data_dir(prefix: str) -> Iterator[Path]:
    """A fresh folder under /tmp, removed afterwards whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def met(value: float | None, limit: float, *, at_least: bool = False) -> dict[str, Any]:
    """A target verdict: the measured value, the limit, and whether it is met."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {"value": None, "limit": limit, "met": False}
    ok = value >= limit if at_least else value <= limit
    return {"value": value, "limit": limit, "met": ok}


def emit(result: dict[str, Any], out: Path | None) -> None:
    """Print the result as JSON on stdout, and write it to ``out`` when given."""
    text = json.dumps(result, indent=2, default=str)
    print(text, flush=True)
    if out is not None:
        out.write_text(text + "\n")


def run_benchmark(
    name: str,
    description: str,
    run: Callable[[bool, int], Coroutine[Any, Any, dict[str, Any]]],
    finish: Callable[[dict[str, Any], bool], dict[str, Any]],
) -> None:
    """The shared main(): parse args, run, add machine facts and load, ``finish`` adds targets."""
    args = parse_args(description)
    result: dict[str, Any] = {
        "benchmark": name,
        "quick": args.quick,
        "machine": machine(),
        "loadavg_start": load_average(),
    }
    started = time.perf_counter()
    result |= asyncio.run(run(args.quick, args.seed))
    result["loadavg_end"] = load_average()
    result["seconds"] = round(time.perf_counter() - started, 1)
    result |= finish(result, args.quick)
    emit(result, args.out)
