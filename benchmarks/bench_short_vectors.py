"""Do short chit-chat turns need a dense vector? Recall on locomo-dev with and without one.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_short_vectors.py [--words 3 5 8] [--quick]``

Builds the locomo-dev memories of bench_recall.py once per setting with the shipped model; in
the "without" folders every memory whose turn (the text after "Speaker: ") has fewer than N
words is stored with an all-zero vector, which scores as no match at all (inner product 0),
the way a memory without a vector would rank if short turns were never embedded. Each folder
is then queried by the shipped ranker (fusion + learned reranker) and by the dense ranker
alone; Recall@10 over categories 1-4 is compared with the baseline, with the share of
memories affected and the embedding work it would save.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import drain_embeddings, emit
from bench_recall import DEFAULT_DATA, RANKERS, Question, evaluate, load

from memory import MemorySystem, load_settings
from memory.encoder import Encoder, Vectors, build_encoder, load_encoder


def turn_words(text: str) -> int:
    """Words of a locomo memory's turn, without its "Speaker: " and photo caption."""
    turn = text.split(": ", 1)[-1].split(" (photo: ", 1)[0]
    return len(turn.split())


class ShortTextsUnembedded:
    """The shipped encoder, but turns under ``max_words`` words get a zero vector."""

    def __init__(self, inner: Encoder, max_words: int) -> None:
        self._inner = inner
        self._max_words = max_words
        self.zeroed = 0

    @property
    def dim(self) -> int:
        return self._inner.dim

    @property
    def name(self) -> str:
        return self._inner.name  # the same name: the evaluating process keeps these vectors

    async def load(self) -> None:
        await load_encoder(self._inner)

    async def encode(self, texts: Sequence[str]) -> Vectors:
        vectors = (await self._inner.encode(texts)).copy()
        for row, text in enumerate(texts):
            if turn_words(text) < self._max_words:
                vectors[row] = np.zeros(vectors.shape[1], dtype=np.float32)
                self.zeroed += 1
        return vectors

    async def close(self) -> None:
        await self._inner.close()

    def stats(self) -> dict[str, Any]:
        return self._inner.stats()


async def build(folder: Path, encoder: Encoder, turns: dict[str, list[Any]]) -> None:
    settings = load_settings(environ={})
    async with MemorySystem(folder, settings=settings, encoder=encoder) as ms:
        assert await ms.wait_ready()
        for user, rows in turns.items():
            for dia_id, text, when in rows:
                await ms.save_memory(
                    user, text, kind="exchange", created_at=when, metadata={"dia_id": dia_id}
                )
        await drain_embeddings(ms, timeout=3600)
    await encoder.close()  # handed in, so not closed by the MemorySystem


async def recall_of(folder: Path, questions: list[Question]) -> dict[str, float]:
    out = {}
    for ranker in ("reranked", "dense"):
        settings = load_settings(environ={}, overrides={"retrieval": dict(RANKERS[ranker])})
        table, _, _ = await evaluate(folder, settings, questions)
        out[ranker] = table["overall"]["recall@10"]
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--words", type=int, nargs="+", default=[3, 5, 8], help="thresholds N to try")
    parser.add_argument("--quick", action="store_true", help="two conversations only")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    turns, questions = load(DEFAULT_DATA, 2 if args.quick else None)
    texts = [text for rows in turns.values() for _, text, _ in rows]
    root = Path(tempfile.mkdtemp(prefix="bench-short-"))
    report: dict[str, Any] = {
        "command": "benchmarks/bench_short_vectors.py " + " ".join(sys.argv[1:]),
        "memories": len(texts),
        "questions": sum(1 for q in questions if q.evidence and q.category != 5),
    }
    try:
        started = time.perf_counter()
        encoder = await build_encoder(load_settings(environ={}).encoder, load=False)
        await build(root / "baseline", encoder, turns)
        report["baseline"] = {"recall@10": await recall_of(root / "baseline", questions)}
        report["baseline"]["build_and_eval_s"] = round(time.perf_counter() - started, 1)
        for n in args.words:
            print(f"without vectors under {n} words", file=sys.stderr)
            inner = await build_encoder(load_settings(environ={}).encoder, load=False)
            wrapped = ShortTextsUnembedded(inner, n)
            await build(root / f"under{n}", wrapped, turns)
            recall = await recall_of(root / f"under{n}", questions)
            short = sum(1 for t in texts if turn_words(t) < n)
            report[f"without_vectors_under_{n}_words"] = {
                "memories_without_vector": short,
                "share_of_memories": round(short / len(texts), 4),
                "recall@10": recall,
                "delta_recall@10": {
                    k: round(recall[k] - report["baseline"]["recall@10"][k], 4) for k in recall
                },
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    emit(report, args.out)


if __name__ == "__main__":
    asyncio.run(main())
