"""Retrieval quality on locomo-dev through the public API; prints JSON.

One user per conversation, one memory per turn ("Speaker: text", the photo caption appended),
the session date as the memory's time. For each question, the top 20 of ``retrieve_memory``
give Recall@k and Hit@k (k = 1, 5, 10, 20), per category and over categories 1-4, for the
dense ranker alone, the lexical ranker alone, fusion without neighbours, and the shipped
fusion. Category 5 (adversarial) is reported apart.

    .venv/bin/python benchmarks/bench_recall.py [--data DIR] [--model NAME_OR_PATH] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import drain_embeddings, emit

from memory import MemorySystem, load_settings
from memory.encoder import effective_precision  # internal: the number format in use

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "locomo-dev"
KS = (1, 5, 10, 20)
OFF = {"reranker": False}
RANKERS: dict[str, dict[str, float | bool]] = {
    "dense": {"dense_weight": 1.0, "lexical_weight": 0.0, "neighbour_weight": 0.0, **OFF},
    "lexical": {"dense_weight": 0.0, "lexical_weight": 1.0, "neighbour_weight": 0.0, **OFF},
    "fused_no_neighbours": {"neighbour_weight": 0.0, **OFF},
    "fused": {**OFF},
    "reranked": {"reranker": True},
}


@dataclass(frozen=True)
class Question:
    user: str
    text: str
    category: int
    evidence: frozenset[str]


def load(data: Path, limit: int | None) -> tuple[dict[str, list[tuple[str, str, datetime]]], list[Question]]:
    """Turns per conversation (dia_id, text, time) and the questions."""
    turns: dict[str, list[tuple[str, str, datetime]]] = {}
    questions: list[Question] = []
    for path in sorted(data.glob("*.json"))[:limit]:
        doc = json.loads(path.read_text())
        user = path.stem
        rows = []
        sessions = sorted(int(k.split("_")[1]) for k in doc if re.fullmatch(r"session_\d+", k) and doc[k])
        for s in sessions:
            when = datetime.strptime(doc[f"session_{s}_date_time"].strip(), "%I:%M %p on %d %B, %Y")
            for turn in doc[f"session_{s}"]:
                text = f"{turn['speaker']}: {turn['text']}"
                if turn.get("blip_caption"):
                    text += f" (photo: {turn['blip_caption']})"
                rows.append((turn["dia_id"], text, when.replace(tzinfo=UTC)))
        turns[user] = rows
        for qa in doc["qa"]:
            # A few evidence ids are malformed ("D8:6; D9:17", "D:11:26"): read every D<n>:<m>.
            evidence = {
                f"D{int(a)}:{int(b)}"
                for e in qa.get("evidence", [])
                for a, b in re.findall(r"D\s*:?\s*(\d+)\s*:\s*(\d+)", e)
            }
            questions.append(Question(user, qa["question"], int(qa["category"]), frozenset(evidence)))
    return turns, questions


async def build(folder: Path, settings: Any, turns: dict[str, list[tuple[str, str, datetime]]]) -> float:
    started = time.perf_counter()
    async with MemorySystem(folder, settings=settings) as ms:
        await ms.wait_ready()  # the model loads in the background; figures are for dense retrieval
        for user, rows in turns.items():
            for dia_id, text, when in rows:
                await ms.save_memory(
                    user, text, kind="exchange", created_at=when, metadata={"dia_id": dia_id}
                )
        await drain_embeddings(ms, timeout=3600)  # close() leaves a backlog to the next start
    return time.perf_counter() - started


def recall_table(ranked: Iterable[tuple[Question, Sequence[str]]]) -> dict[str, dict[str, Any]]:
    """Recall@k and Hit@k per category, over categories 1-4 ("overall"), category 5 apart."""
    hits: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for q, ids in ranked:
        for key in (str(q.category), "overall" if q.category != 5 else "category_5_adversarial"):
            per_k = hits.setdefault(key, {k: [] for k in KS})
            for k in KS:
                got = len(q.evidence & set(ids[:k]))
                per_k[k].append((got / len(q.evidence), float(got > 0)))
    return {
        key: {
            "questions": len(per_k[KS[0]]),
            **{f"recall@{k}": round(sum(r for r, _ in v) / len(v), 4) for k, v in per_k.items()},
            **{f"hit@{k}": round(sum(h for _, h in v) / len(v), 4) for k, v in per_k.items()},
        }
        for key, per_k in sorted(hits.items())
    }


async def evaluate(
    folder: Path, settings: Any, questions: list[Question]
) -> tuple[dict[str, Any], float, float]:
    """The table, and the wall and CPU seconds (every thread of the process) per query."""
    ranked: list[tuple[Question, Sequence[str]]] = []
    async with MemorySystem(folder, settings=settings) as ms:
        await ms.wait_ready()
        await ms.retrieve_memory(questions[0].user, "warm up")
        started, cpu = time.perf_counter(), time.process_time()
        for q in questions:
            if q.evidence:
                found = await ms.retrieve_memory(q.user, q.text, k=max(KS))
                ranked.append((q, [r.memory.metadata["dia_id"] for r in found]))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    n = max(1, len(ranked))
    return recall_table(ranked), elapsed / n, cpu / n


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the locomo-dev folder")
    parser.add_argument("--model", help="encoder.model setting (default: the configured model)")
    parser.add_argument("--quick", action="store_true", help="two conversations only")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--loco", action="store_true", help="also the reranker's leave-one-conversation-out figures"
    )
    parser.add_argument(
        "--cache", type=Path, default=Path("/tmp/memory-bot-ranker"), help="train_ranker's cache (--loco)"
    )
    parser.add_argument(
        "--rankers", nargs="+", choices=sorted(RANKERS), default=list(RANKERS), help="which rankers to run"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a retrieval setting for every ranker, e.g. --set context_weight=0.5",
    )
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"bench_recall: no dataset at {args.data}; pass --data")
    turns, questions = load(args.data, 2 if args.quick else None)
    encoder = {"model": args.model} if args.model else {}
    folder = Path(tempfile.mkdtemp(prefix="bench-recall-"))
    try:
        base = load_settings(overrides={"encoder": encoder})
        build_seconds = await build(folder, base, turns)
        print(
            f"built {sum(map(len, turns.values()))} memories in {build_seconds:.1f} s",
            file=sys.stderr,
        )
        report: dict[str, Any] = {
            "dataset": str(args.data),
            "conversations": len(turns),
            "memories": sum(map(len, turns.values())),
            "model": base.encoder.model,
            "backend": base.encoder.backend,
            "precision": effective_precision(base.encoder),
            "build_seconds": round(build_seconds, 1),
            "rankers": {},
        }
        extra = dict(item.split("=", 1) for item in args.set)
        for name in args.rankers:
            weights = {**extra, **RANKERS[name]}
            settings = load_settings(overrides={"encoder": encoder, "retrieval": weights})
            table, per_query, cpu = await evaluate(folder, settings, questions)
            report["rankers"][name] = {
                "seconds_per_query": round(per_query, 4),
                "cpu_seconds_per_query": round(cpu, 4),
                **table,
            }
            print(f"{name}: recall@10 {table['overall']['recall@10']}", file=sys.stderr)
        report["settings"] = extra
        if {"fused", "dense", "lexical"} <= set(args.rankers):
            fused = report["rankers"]["fused"]["overall"]["recall@10"]
            report["fused_beats_both_at_10"] = fused > max(
                report["rankers"][n]["overall"]["recall@10"] for n in ("dense", "lexical")
            )
            report["target_recall@10_0.70_met"] = fused >= 0.70
        if {"fused", "reranked"} <= set(args.rankers):
            cpu_of = {n: report["rankers"][n]["cpu_seconds_per_query"] for n in ("fused", "reranked")}
            ratio = cpu_of["reranked"] / cpu_of["fused"] if cpu_of["fused"] else None
            report["reranker_cpu_ratio"] = None if ratio is None else round(ratio, 3)
        if args.loco:
            from train_ranker import measure  # the training script's own pools and folds

            report["leave_one_conversation_out"] = (await measure(args.data, args.cache, args.model))[1]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    emit(report, args.out)


if __name__ == "__main__":
    asyncio.run(main())
