"""CPU per query of the second-stage ranker over locomo-dev's 1,073 pools; prints JSON.

The pools and features are train_ranker.py's (the shipped retrieval code over its cached
database: run train_ranker.py once first); the steps are timed as the running system calls
them: the pool's features, the model's scores, the final order (each the median of
three passes over every query: ``train_ranker.ranker_cost``). An absolute time is noise on a
shared machine: to compare two versions, run this on each checkout alternately (copied into an
older checkout it measures that version's ranker with that version's own code):

    PYTHONPATH=. .venv/bin/python benchmarks/bench_ranker_cost.py [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from _common import emit, load_average
from bench_recall import DEFAULT_DATA
from train_ranker import pools, ranker_cost

from memory.ranker import WEIGHTS_FILE, load_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the locomo-dev folder")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/memory-bot-ranker"), help="its cache folder")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    samples = asyncio.run(pools(args.data, args.cache))[0]
    report = {
        "queries": len(samples),
        "unit": "CPU milliseconds per query",
        # the trainer's own measure (each checkout's: an older one times its own features)
        "ranker_ms_per_query": ranker_cost(load_model(WEIGHTS_FILE), samples),
        "load_average": load_average(),
        "weights": str(WEIGHTS_FILE),
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
