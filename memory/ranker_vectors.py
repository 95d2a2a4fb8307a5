"""Ranker features read from the candidates' own vectors, and the kind of question asked.

Why the vectors: a memory's cosine to the query mixes two things, what the memory is about
and what every memory of this conversation shares (its speakers, its topics, the style of
the chat). Taking the pool's mean vector out of the query and of each candidate leaves what
sets this memory apart from its rivals; and a candidate that resembles the pool's best
candidates is more often evidence too (a multi-hop question's second turn looks like its
first). On locomo-dev, leave-one-conversation-out Recall@10 0.829 -> 0.839 with these
columns and the question kinds below (benchmarks/train_ranker.py).

Why the question kinds: the right evidence looks different for "would she likely ...", "is
it ...", "why ..." and "what ...": as flags (and the flags times the dense share) the trees
and the regression can weigh the other features per kind of question.
"""

from __future__ import annotations

import re

import numpy as np

VECTOR_FEATURES: tuple[str, ...] = (
    "dense_centered",
    "dense_centered_minmax",
    "rank_centered_log",
    "like_top1",
    "like_top3",
    "like_top5",
    "like_density",
)

_KINDS: tuple[tuple[str, str], ...] = (
    ("what", r"^\s*what\b"),
    ("when", r"\bwhen\b"),
    ("where", r"\bwhere\b"),
    ("who", r"\bwho\b"),
    ("why", r"\bwhy\b"),
    ("how", r"\bhow\b"),
    ("likely", r"\b(would|could|likely|might)\b"),
    ("yes_no", r"^\s*(is|are|does|did|do|was|were|has|have|can)\b"),
    ("both", r"\b(and|both)\b"),
    ("kinds_of", r"\b(kinds?|types?|activities|things|ways)\b"),
)
# One scan for every kind: ten separate searches cost 0.14 ms a query.
_KIND_PATTERN = re.compile("|".join(f"(?P<{name}>{pattern})" for name, pattern in _KINDS), re.I)
_KIND_AT = {name: i for i, (name, _) in enumerate(_KINDS)}
QUESTION_FEATURES: tuple[str, ...] = tuple(f"asks_{name}" for name, _ in _KINDS) + tuple(
    f"asks_{name}*dense_minmax" for name, _ in _KINDS
)


def question_kinds(query: str) -> np.ndarray:
    """One flag per kind of question in ``_KINDS`` (several may hold)."""
    flags = np.zeros(len(_KINDS))
    for match in _KIND_PATTERN.finditer(query):
        flags[_KIND_AT[match.lastgroup or ""]] = 1.0
    return flags


def question_features(query: str, dense_share: np.ndarray) -> np.ndarray:
    """The ``QUESTION_FEATURES`` columns: the flags, and the flags times the dense share."""
    flags = question_kinds(query)
    n = len(dense_share)
    return np.hstack([np.tile(flags, (n, 1)), dense_share[:, None] * flags[None, :]])


# OpenBLAS runs a matrix product of more than about 262,000 multiply-adds on a second thread,
# which then spins for a while after it: measured, the whole feature pass cost twice its wall
# time in CPU after one 60 x 60 x 384 product. Products in blocks below that size stay on the
# caller's thread.
_SINGLE_THREAD_PRODUCT = 200_000


def _gram(unit: np.ndarray) -> np.ndarray:
    """``unit @ unit.T``, in column blocks small enough to run on the calling thread."""
    n, dim = unit.shape
    step = max(1, _SINGLE_THREAD_PRODUCT // max(1, n * dim))
    if step >= n:
        return np.asarray(unit @ unit.T)
    return np.hstack([unit @ unit[start : start + step].T for start in range(0, n, step)])


def vector_features(query: np.ndarray | None, vectors: np.ndarray | None, n: int) -> np.ndarray:
    """The ``VECTOR_FEATURES`` columns for the ``n`` candidates in pool order.

    ``vectors`` holds one row per candidate (NaN: not embedded yet); without a query vector or
    candidate vectors (no model yet: a lexical-only retrieve) every column is 0. A candidate
    without a vector gets the pool's lowest centered cosine and no likeness, as if it were the
    weakest dense candidate. Computed in
    float32, as the vectors are stored: a 60 x 60 product of float64 rows costs twice the CPU.
    """
    out = np.zeros((n, len(VECTOR_FEATURES)))
    if query is None or vectors is None or n == 0:
        return out
    if len(vectors) != n:
        raise ValueError(f"{len(vectors)} vectors for {n} candidates")
    known = ~np.isnan(vectors[:, 0])
    if not known.any():
        return out
    vectors = np.asarray(vectors, dtype=np.float32)
    mean = vectors[known].mean(axis=0)
    centered = vectors - mean
    centered[~known] = 0.0
    norms = np.maximum(np.linalg.norm(centered, axis=1), 1e-12)
    unit = centered / norms[:, None]
    q = np.asarray(query, dtype=np.float32).reshape(-1) - mean
    cosine = (unit @ (q / (float(np.linalg.norm(q)) or 1.0))).astype(np.float64)
    lowest = float(cosine[known].min())
    cosine[~known] = lowest
    span = float(cosine.max()) - lowest
    out[:, 0] = cosine
    out[:, 1] = (cosine - lowest) / span if span > 1e-12 else 0.0
    ranks = np.empty(n)
    ranks[np.argsort(-cosine, kind="stable")] = np.arange(n)
    out[:, 2] = np.log1p(ranks)
    like = _gram(unit)
    np.fill_diagonal(like, -1.0)
    like[:, ~known] = -1.0
    out[:, 3] = like[:, 0]
    out[:, 4] = like[:, :3].max(axis=1)
    out[:, 5] = like[:, :5].max(axis=1)
    out[:, 6] = np.sort(like, axis=1)[:, -3:].mean(axis=1)
    out[~known, 3:] = 0.0
    return out
