"""Ranking: a dense (FAISS) and a lexical (FTS5 BM25) ranking, fused with weights.

Min-max normalised linear fusion measured better than reciprocal rank fusion on locomo-dev
(benchmarks/bench_recall.py): RRF throws away how far ahead the best match is, which is what
BM25 is most often right about. Each ranking is scaled to [0, 1] over its own candidates; a
memory missing from one ranking scores 0 there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

_TOKEN = re.compile(r"\w+", re.UNICODE)

# Words that carry no topic; BM25 would still reward them, and they cost MATCH time.
STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    yourselves""".split()
)


def fts_query(text: str, *, drop_stop_words: bool = True) -> str | None:
    """An FTS5 expression that ORs the query's words, each quoted so no input breaks the syntax."""
    words = [w.lower() for w in _TOKEN.findall(text)]
    kept = [w for w in words if w not in STOP_WORDS] if drop_stop_words else words
    if not kept:
        kept = words
    unique = list(dict.fromkeys(kept))
    if not unique:
        return None
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in unique)


@dataclass(frozen=True, slots=True)
class FusionWeights:
    dense: float
    lexical: float
    recency: float = 0.0
    recency_half_life_days: float = 30.0


def min_max(scores: Mapping[int, float]) -> dict[int, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high - low < 1e-12:
        return dict.fromkeys(scores, 1.0)
    return {k: (v - low) / (high - low) for k, v in scores.items()}


def fuse(
    dense: Sequence[tuple[int, float]],
    lexical: Sequence[tuple[int, float]],
    weights: FusionWeights,
) -> list[tuple[int, float, tuple[str, ...]]]:
    """(id, fused score, rankers that found it), best first; ties broken by newer id."""
    dense_n = min_max(dict(dense))
    lexical_n = min_max(dict(lexical))
    fused = []
    for mid in dense_n.keys() | lexical_n.keys():
        rankers = tuple(
            name for name, found in (("dense", mid in dense_n), ("lexical", mid in lexical_n)) if found
        )
        score = weights.dense * dense_n.get(mid, 0.0) + weights.lexical * lexical_n.get(mid, 0.0)
        fused.append((mid, score, rankers))
    fused.sort(key=lambda row: (-row[1], -row[0]))
    return fused


def recency_factor(created_at: datetime, now: datetime, weights: FusionWeights) -> float:
    """1 for a new memory, falling towards ``1 - recency`` with age (half-life in days)."""
    if weights.recency <= 0:
        return 1.0
    age_days = max((now - created_at).total_seconds(), 0.0) / 86_400
    decay = math.pow(0.5, age_days / weights.recency_half_life_days)
    return 1.0 - weights.recency * (1.0 - decay)
