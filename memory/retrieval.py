"""Ranking: dense (FAISS) and lexical (FTS5 BM25) rankings, fused, then shared with neighbours.

Chosen by measurement on locomo-dev (benchmarks/bench_recall.py; Recall@10 over categories
1-4 with all-MiniLM-L6-v2): dense alone 0.46, BM25 alone 0.62, equal-weight reciprocal rank
fusion 0.57, min-max linear fusion 0.68, and this pipeline 0.77:

- dense scores are min-max scaled over the user's memories (a shard of up to 1,000 is scored
  whole in one matrix product; a larger one finds its minimum by searching with the negated
  query), BM25 scores divided by the best;
- fused = 0.6 dense + 0.4 lexical (0.4-0.7 all land within 0.02: not a fragile optimum);
- a memory inherits half of the better of its two session neighbours' fused scores: what was
  said just before or after a turn often holds the answer ("neighbour" in ``rankers``);
- the lexical document of a memory carries the previous turn of its session and its date, and
  the query drops stop words (``lexical_document``, ``lexical.query_terms``); BM25 uses the
  user's own IDF (memory/lexical.py).
Reciprocal rank fusion loses here because it throws away how far ahead the best match is.

That fusion is stage one. By default (``retrieval.reranker``) its top 60 are re-scored by the
learned ranker of memory/ranker.py (Recall@10 0.840 leave-one-conversation-out on locomo-dev,
from 0.770), and what the person only asked the bot is set after every statement.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np

from memory import models
from memory.encoder import Vectors
from memory.index import PerUserIndex
from memory.lexical import query_terms
from memory.ranker import (
    POOL_SIZE,
    Pool,
    RankerModel,
    asks_the_bot,
    final_order,
    load_model,
    person_part,
    weights_path,
)
from memory.records import Memory, ScoredMemory
from memory.settings import RetrievalSettings
from memory.storage.protocol import Store
from memory.store_dense import StoreDense

IndexRunner = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class FusionWeights:
    dense: float
    lexical: float
    neighbour: float = 0.0
    recency: float = 0.0
    recency_half_life_days: float = 30.0

    @classmethod
    def from_settings(cls, cfg: RetrievalSettings) -> FusionWeights:
        return cls(
            cfg.dense_weight,
            cfg.lexical_weight,
            cfg.neighbour_weight,
            cfg.recency_weight,
            cfg.recency_half_life_days,
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    memory_id: int
    score: float
    rankers: tuple[str, ...]
    dense: float | None
    lexical: float | None


@dataclass(frozen=True, slots=True)
class _Stage:
    """Stage one's result: fused candidates, best first, and the scores and links behind them."""

    ranked: list[Candidate]
    dense: dict[int, float]
    lexical: dict[int, float]
    neighbours: dict[int, tuple[int | None, int | None]]
    floor: float
    hits: set[int]
    query_vector: Vectors | None = None


def fuse(
    dense: Mapping[int, float],
    dense_floor: float,
    lexical: Mapping[int, float],
    neighbours: Mapping[int, tuple[int | None, int | None]],
    weights: FusionWeights,
    dense_hits: Collection[int] | None = None,
) -> list[Candidate]:
    """Fused candidates, best first (ties: newer first).

    ``dense`` holds the inner products of every candidate and neighbour, ``dense_floor`` the
    user's lowest; ``neighbours`` maps a memory to its (previous, next) in the same session;
    ``dense_hits`` are the memories the dense ranker itself returned (default: all of ``dense``).
    """
    found_dense = set(dense if dense_hits is None else dense_hits)
    top = max(dense.values(), default=0.0)
    span = top - dense_floor
    best_lexical = max(lexical.values(), default=0.0)

    def base(mid: int) -> float:
        d = (dense[mid] - dense_floor) / span if mid in dense and span > 1e-12 else float(mid in dense)
        lex = lexical.get(mid, 0.0) / best_lexical if best_lexical > 0 else 0.0
        return weights.dense * d + weights.lexical * lex

    fused = {mid: base(mid) for mid in dense.keys() | lexical.keys()}
    out = []
    for mid, own in fused.items():  # neighbours no ranker found compete on their inherited score
        score = own
        rankers = [
            name for name, found in (("dense", mid in found_dense), ("lexical", mid in lexical)) if found
        ]
        if weights.neighbour > 0:
            prev, nxt = neighbours.get(mid, (None, None))
            shared = max(fused.get(prev, 0.0) if prev else 0.0, fused.get(nxt, 0.0) if nxt else 0.0)
            if shared > 0:
                score += weights.neighbour * shared
                rankers.append("neighbour")
        out.append(Candidate(mid, score, tuple(rankers), dense.get(mid), lexical.get(mid)))
    out.sort(key=lambda c: (-c.score, -c.memory_id))
    return out


def recency_factor(created_at: datetime, now: datetime, weights: FusionWeights) -> float:
    """1 for a new memory, falling towards ``1 - recency`` with age (half-life in days)."""
    if weights.recency <= 0:
        return 1.0
    age_days = max((now - created_at).total_seconds(), 0.0) / 86_400
    decay = math.pow(0.5, age_days / weights.recency_half_life_days)
    return 1.0 - weights.recency * (1.0 - decay)


class Retriever:
    """The ranking pipeline for one user's query, over the store and a per-user index.

    Every FAISS call goes through ``run_index`` (the index's own worker thread in the running
    system, a plain call in the read-only inspector).
    """

    def __init__(
        self, store: Store, settings: RetrievalSettings, run_index: IndexRunner, encoder_model: str = ""
    ) -> None:
        self._store = store
        self._cfg = settings
        self._run_index = run_index
        # The second stage is trained on one model's scores: its weights follow encoder.model.
        self._model: RankerModel | None = (
            load_model(weights_path(encoder_model)) if settings.reranker else None
        )
        self._basis = self._model.basis_for(encoder_model or models.DEFAULT.name) if self._model else None

    async def retrieve(
        self,
        index: PerUserIndex | StoreDense | None,
        user_id: str,
        query: str,
        embed_query: Callable[[], Awaitable[Vectors]],
        k: int,
        kinds: frozenset[str] | None,
        scopes: frozenset[str] | None = None,
    ) -> list[ScoredMemory]:
        """The best k of the user's memories (of ``kinds``, said in ``scopes``; None: all);
        ``index`` None (no model yet) ranks with the dense part absent."""
        weights = FusionWeights.from_settings(self._cfg)
        if self._model is None:
            stage = await self._fused(index, user_id, query, embed_query, k, kinds, scopes=scopes)
            return await self._materialise(stage.ranked, user_id, k, kinds, weights, scopes)
        pool = await self.pool(index, user_id, query, embed_query, kinds, max(k, POOL_SIZE), scopes)
        now = datetime.now(UTC)
        features = pool.features(self._basis)
        scores = self._model.scores(features) * np.array(
            [recency_factor(m.created_at, now, weights) for m in pool.memories]
        )
        results = []
        for i in final_order(pool.memories, features, scores)[:k]:
            dense = float(pool.dense[i]) if pool.known_dense[i] else None
            lexical = float(pool.lexical[i]) if pool.lexical[i] > 0 else None
            rankers = (*pool.rankers[i], "reranker")
            results.append(ScoredMemory(pool.memories[i], float(scores[i]), rankers, dense, lexical))
        return results

    async def pool(
        self,
        index: PerUserIndex | StoreDense | None,
        user_id: str,
        query: str,
        embed_query: Callable[[], Awaitable[Vectors]],
        kinds: frozenset[str] | None,
        size: int = POOL_SIZE,
        scopes: frozenset[str] | None = None,
    ) -> Pool:
        """The fusion's best ``size`` candidates of the user (of ``kinds``, said in ``scopes``),
        rows read, for the reranker; the training script (benchmarks/train_ranker.py) reads the
        same pools. The pool is scoped from the start: no other scope's memory is a candidate
        or a neighbour lending its score or text."""
        stage = await self._fused(
            index, user_id, query, embed_query, size, kinds, need_neighbours=True, scopes=scopes
        )
        dense, lexical, neighbours, floor = stage.dense, stage.lexical, stage.neighbours, stage.floor
        limit = size * (4 if kinds else 1)
        rows = await self._rows(stage.ranked[:limit], neighbours)
        # What the person asked the bot is no fact, and its neighbour is the person's next
        # message, not an answer: the fusion is redone without those questions (so they
        # neither set the scale nor lend scores), and they follow the statements in the pool.
        asked = {mid for mid, m in rows.items() if asks_the_bot(m)}
        ranked = stage.ranked
        if asked:
            neighbours = {
                mid: (None if p in asked else p, None if n in asked else n)
                for mid, (p, n) in neighbours.items()
                if mid not in asked
            }
            ranked = fuse(
                {m: v for m, v in dense.items() if m not in asked},
                floor,
                {m: v for m, v in lexical.items() if m not in asked},
                neighbours,
                FusionWeights.from_settings(self._cfg),
                stage.hits - asked,
            )
            rows |= await self._rows([c for c in ranked[:limit] if c.memory_id not in rows], neighbours)

        def usable(c: Candidate) -> bool:
            m = rows.get(c.memory_id)  # None: forgotten meanwhile; isolation is checked on the row
            return m is not None and _visible(m, user_id, kinds, scopes)

        chosen = [c for c in ranked[:limit] if usable(c)][:size]
        chosen += [c for c in stage.ranked[:limit] if c.memory_id in asked and usable(c)]

        def raw_dense(mid: int | None) -> float:
            return dense.get(mid, math.nan) if mid is not None else math.nan

        def raw_lexical(mid: int | None) -> float:
            return lexical.get(mid, 0.0) if mid is not None else 0.0

        def steps(mid: int) -> tuple[int | None, int | None, int | None, int | None]:
            prev, nxt = neighbours.get(mid, (None, None))
            prev2 = neighbours.get(prev, (None, None))[0] if prev is not None else None
            next2 = neighbours.get(nxt, (None, None))[1] if nxt is not None else None
            return prev, nxt, prev2, next2

        around = [steps(c.memory_id) for c in chosen]
        vectors = await self._vectors(index, user_id, [c.memory_id for c in chosen], stage.query_vector)
        return Pool(
            query=query,
            memories=tuple(rows[c.memory_id] for c in chosen),
            rankers=tuple(c.rankers for c in chosen),
            fused=np.array([c.score for c in chosen]),
            dense=np.array([dense.get(c.memory_id, floor) for c in chosen]),
            known_dense=tuple(c.memory_id in dense for c in chosen),
            lexical=np.array([lexical.get(c.memory_id, 0.0) for c in chosen]),
            dense_floor=floor,
            neighbour_dense=np.array([[raw_dense(n) for n in a] for a in around]).reshape(-1, 4),
            neighbour_lexical=np.array([[raw_lexical(n) for n in a] for a in around]).reshape(-1, 4),
            previous=tuple(rows.get(a[0]) if a[0] is not None else None for a in around),
            following=tuple(rows.get(a[1]) if a[1] is not None else None for a in around),
            session_gap_minutes=self._cfg.session_gap_minutes,
            query_vector=None if vectors is None else np.asarray(stage.query_vector),
            vectors=vectors,
        )

    async def _vectors(
        self,
        index: PerUserIndex | StoreDense | None,
        user_id: str,
        ids: Sequence[int],
        query_vector: Vectors | None,
    ) -> np.ndarray | None:
        """The candidates' stored vectors (the ranker's vector features), None without a model."""
        if index is None or query_vector is None:
            return None
        if isinstance(index, StoreDense):
            found: np.ndarray = await index.vectors_of(user_id, ids, int(np.asarray(query_vector).size))
        else:
            found = await self._run_index(index.vectors_of, user_id, ids)
        return found

    async def _rows(
        self, candidates: Sequence[Candidate], neighbours: Mapping[int, tuple[int | None, int | None]]
    ) -> dict[int, Memory]:
        """The rows of the candidates and of their session neighbours, in one read."""
        wanted = {c.memory_id for c in candidates}
        wanted |= {n for c in candidates for n in neighbours.get(c.memory_id, (None, None)) if n is not None}
        return await self._store.memories_by_id(sorted(wanted)) if wanted else {}

    async def _fused(
        self,
        index: PerUserIndex | StoreDense | None,
        user_id: str,
        query: str,
        embed_query: Callable[[], Awaitable[Vectors]],
        k: int,
        kinds: frozenset[str] | None,
        *,
        need_neighbours: bool = False,
        scopes: frozenset[str] | None = None,
    ) -> _Stage:
        """Stage one: fused candidates, best first, and the scores and links they came from.

        With ``scopes``, both rankers search only the memories said there (FAISS scores only
        their ids, the FTS5 join only their rows), so a scoped search still finds k."""
        cfg = self._cfg
        weights = FusionWeights.from_settings(cfg)
        candidates = max(k, cfg.candidates) * (4 if kinds else 1)
        allowed = None if scopes is None else frozenset(await self._store.scoped_ids(user_id, scopes))
        # The lexical query needs no vector: it runs on SQLite's thread while the model works.
        lexical_search = asyncio.ensure_future(
            self._store.lexical_search(
                user_id, query_terms(user_id, query), candidates * 2, kinds, cfg.context_weight, scopes
            )
        )
        query_vector: Vectors | None = None
        dense_top: list[tuple[int, float]] = []
        floor, known = 0.0, dict[int, float]()
        try:
            if index is not None:
                query_vector = await embed_query()
                if isinstance(index, StoreDense):
                    dense_top, floor, known = await index.search_scored(
                        user_id, query_vector, candidates, allowed, scopes
                    )
                else:
                    dense_top, floor, known = await self._run_index(
                        index.search_scored, user_id, query_vector, candidates, allowed
                    )
            lexical = dict(await lexical_search)
        finally:
            lexical_search.cancel()
        if allowed is not None:  # written after the id list was read: left to the next query
            lexical = {mid: score for mid, score in lexical.items() if mid in allowed}
        dense = dict(dense_top)
        neighbours: dict[int, tuple[int | None, int | None]] = {}
        if weights.neighbour > 0 or need_neighbours:
            neighbours = await self._store.session_neighbours(dense.keys() | lexical.keys())
            if allowed is not None:
                neighbours = {
                    mid: (p if p in allowed else None, n if n in allowed else None)
                    for mid, (p, n) in neighbours.items()
                    if mid in allowed
                }
        # Every candidate gets its true dense score, not 0 for missing FAISS's top n: a lexical
        # hit just below that cut is still close in meaning (this alone is worth 0.15 Recall@10).
        linked = {n for pair in neighbours.values() for n in pair if n is not None}
        missing = (lexical.keys() | linked) - dense.keys()
        dense.update((mid, known[mid]) for mid in missing & known.keys())
        if (unknown := missing - known.keys()) and index is not None and query_vector is not None:
            if isinstance(index, StoreDense):
                dense.update(await index.scores_for(user_id, sorted(unknown), query_vector, allowed))
            else:
                dense.update(
                    await self._run_index(index.scores_for, user_id, sorted(unknown), query_vector, allowed)
                )
        hits = {mid for mid, _ in dense_top}
        ranked = fuse(dense, floor, lexical, neighbours, weights, hits)
        return _Stage(ranked, dense, lexical, neighbours, floor, hits, query_vector)

    async def _materialise(
        self,
        ranked: Sequence[Candidate],
        user_id: str,
        k: int,
        kinds: frozenset[str] | None,
        weights: FusionWeights,
        scopes: frozenset[str] | None = None,
    ) -> list[ScoredMemory]:
        # Rows are read only for what can make the top k: the first k (reading 40 cost 0.5 ms),
        # more when rows were forgotten meanwhile or filtered by kind, all when recency reorders.
        now = datetime.now(UTC)
        results: list[ScoredMemory] = []
        wide = k * 4 + 20
        size = len(ranked) if weights.recency > 0 else (wide if kinds else k)
        start = 0
        while start < len(ranked) and (weights.recency > 0 or len(results) < k):
            window = ranked[start : start + size]
            start, size = start + size, wide
            rows = await self._store.memories_by_id([c.memory_id for c in window])
            for c in window:
                memory = rows.get(c.memory_id)
                if memory is None or not _visible(memory, user_id, kinds, scopes):
                    continue  # forgotten meanwhile, or filtered: isolation is checked on the row
                score = c.score * recency_factor(memory.created_at, now, weights)
                results.append(ScoredMemory(memory, score, c.rankers, c.dense, c.lexical))
        results.sort(key=lambda r: (-r.score, -r.memory.id))
        return results[:k]


def _visible(
    memory: Memory, user_id: str, kinds: frozenset[str] | None, scopes: frozenset[str] | None
) -> bool:
    """The last check on a row read (the searches filtered already): owner, kind, scope."""
    return (
        memory.user_id == user_id
        and (not kinds or memory.kind in kinds)
        and (scopes is None or memory.scope in scopes)
    )


def lexical_document(memory: Memory, previous: Memory | None) -> tuple[str, str]:
    """What FTS5 indexes: the person's words with their date, and the session's previous turn.

    The bot's reply is left out (its stock phrases, "Noted!", would match every query like it),
    and a note (``/remember``) stands alone: it is neither indexed with the turn before it nor
    lent as context to the turn after it (a note about a vet must not match "allergy" because
    the question before it did).
    """
    body = f"{person_part(memory)} {_date_words(memory.created_at.date())}"
    if previous is None or "note" in (memory.kind, previous.kind):
        return body, ""
    return body, person_part(previous)


@functools.lru_cache(maxsize=4_096)
def _date_words(day: date) -> str:
    return f"[{day.day} {day:%B %Y}]"


def same_session(previous: Memory | None, memory: Memory, gap_minutes: float) -> bool:
    """Two memories of a user belong to one conversation when no long pause lies between them
    and they were said in the same place (a session never links two scopes: its neighbour would
    carry one scope's words into the other's search)."""
    if previous is None or gap_minutes <= 0 or previous.scope != memory.scope:
        return False
    pause = (memory.created_at - previous.created_at).total_seconds()
    return 0 <= pause <= gap_minutes * 60
