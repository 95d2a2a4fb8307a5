"""CPU per query of the second-stage ranker over locomo-dev's 1,073 pools; prints JSON.

The pools and features are train_ranker.py's (the shipped retrieval code over its cached
database: run train_ranker.py once first); the steps are timed as the running system calls
them: the pool's features, the model's scores, the final order (each the median of
``--passes`` passes over every query). An absolute time is noise on a shared machine: to
compare two versions, run this on each checkout alternately (it also runs on checkouts from
before the principal-direction features, so the version before them can be measured too):

    PYTHONPATH=. .venv/bin/python benchmarks/bench_ranker_cost.py [--passes N] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from _common import emit, load_average
from bench_recall import DEFAULT_DATA
from train_ranker import pools

from memory.ranker import WEIGHTS_FILE, final_order, load_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the locomo-dev folder")
    parser.add_argument(
        "--cache", type=Path, default=Path("/tmp/memory-bot-ranker"), help="train_ranker's cache"
    )
    parser.add_argument("--passes", type=int, default=3, help="passes per step; the median is reported")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    samples = asyncio.run(pools(args.data, args.cache))[0]
    model = load_model(WEIGHTS_FILE)
    basis = getattr(model, "basis", None)  # None before the principal-direction features

    def features(s: Any) -> Any:
        return s.pool.features(basis) if basis is not None else s.pool.features()

    rows = [features(s) for s in samples]

    def per_query(step: Any) -> float:
        runs = []
        for _ in range(args.passes):
            started = time.process_time()
            for s, x in zip(samples, rows, strict=True):
                step(s, x)
            runs.append(1000 * (time.process_time() - started) / max(1, len(samples)))
        return round(sorted(runs)[len(runs) // 2], 3)

    cost = {
        "features": per_query(lambda s, x: features(s)),
        "scores": per_query(lambda s, x: model.scores(x)),
        "order": per_query(lambda s, x: final_order(s.memories, x, model.scores(x))),
    }
    cost["order"] = round(max(cost["order"] - cost["scores"], 0.0), 3)
    cost["total"] = round(cost["features"] + cost["scores"] + cost["order"], 3)
    report = {
        "queries": len(samples),
        "unit": "CPU milliseconds per query",
        "ranker_ms_per_query": cost,
        "load_average": load_average(),
        "weights": str(WEIGHTS_FILE),
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
