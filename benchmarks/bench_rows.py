"""CPU per stored row turned into a Memory (``memory_from_row``, both backends); prints JSON.

A retrieve with the reranker reads about a hundred rows (the pool and its neighbours), so a
row's cost shows in every reranked query. One typical locomo-like row, with metadata, is read
``--rows`` times per pass; the best of ``--passes`` passes is reported (the least disturbed by
other work on the machine). To compare two versions, run this on each checkout alternately:

    PYTHONPATH=. .venv/bin/python benchmarks/bench_rows.py [--rows N] [--passes N] [--out FILE]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import emit, load_average

from memory.storage.rows import memory_from_row  # internal: the reader both stores use

ROW = (
    12,
    "conv-26",
    "Caroline: I went to a LGBTQ support group yesterday and it was so powerful.",
    "exchange",
    "2023-05-08T13:56:00+00:00",
    '{"dia_id": "D1:3", "speaker": "Caroline"}',
    None,
    "dm",
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000, help="rows read per pass")
    parser.add_argument("--passes", type=int, default=5, help="passes; the best is reported")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    path = Path("memory.db")
    per_pass = []
    for _ in range(args.passes):
        started = time.process_time()
        for _ in range(args.rows):
            memory_from_row(ROW, path)
        per_pass.append(1e6 * (time.process_time() - started) / args.rows)
    emit(
        {
            "rows_per_pass": args.rows,
            "cpu_us_per_row_best": round(min(per_pass), 2),
            "cpu_us_per_row_passes": [round(v, 2) for v in per_pass],
            "load_average": load_average(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
