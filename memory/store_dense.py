"""Dense search where the vectors live in the database (PostgreSQL + pgvector): the same two
questions the per-process FAISS index answers, asked of the store with an exact per-user scan.

An exact scan costs about 0.5 ms at a few hundred memories but about 58 ms at 20,000 (measured
for DESIGN.md §9), where FAISS takes 5-7 ms. So a user with more than ``shard_threshold``
vectors is searched in a FAISS shard of this process, filled from the database. A shard is
trusted only while the database still holds the same vectors for the user: each search first
reads (count, highest id) of the user's embedded memories (one index-only count), and a
notification that another process changed the user (a forget, an edit) drops the shard at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import numpy as np
import numpy.typing as npt

from memory.index import PerUserIndex
from memory.storage.protocol import DenseSearch

Vectors = npt.NDArray[np.float32]
SHARD_THRESHOLD = 2_000
# The shards kept per process, by vectors held (384 floats each: about 300 MB at this bound).
MAX_CACHED_VECTORS = 200_000
CHUNK = 10_000
Runner = Callable[..., Awaitable[Any]]


class StoreDense:
    """``PerUserIndex.search_scored`` / ``scores_for`` over a ``DenseSearch`` store."""

    def __init__(self, store: DenseSearch, run: Runner, shard_threshold: int = SHARD_THRESHOLD) -> None:
        """``run`` runs a FAISS call off the event loop (the index's worker thread)."""
        self._store = store
        self._run = run
        self._threshold = shard_threshold
        self._shards: OrderedDict[str, tuple[tuple[int, int], PerUserIndex]] = OrderedDict()
        self.shard_loads = 0

    def drop(self, user_ids: Sequence[str] | None) -> None:
        """Other processes changed ``user_ids`` (None: anything may have changed)."""
        if user_ids is None:
            self._shards.clear()
            return
        for uid in user_ids:
            self._shards.pop(uid, None)

    @property
    def cached_vectors(self) -> int:
        return sum(len(index) for _, index in self._shards.values())

    async def _shard(self, user_id: str) -> PerUserIndex | None:
        """The user's FAISS shard when the user has more than the threshold, current."""
        state = await self._store.embedded_state(user_id)
        if state[0] <= self._threshold:
            self._shards.pop(user_id, None)
            return None
        cached = self._shards.get(user_id)
        if cached is not None and cached[0] == state:
            self._shards.move_to_end(user_id)
            return cached[1]
        ids = await self._store.memory_ids(user_id)
        rows: list[tuple[int, str, bytes]] = []
        for start in range(0, len(ids), CHUNK):
            rows += await self._store.embeddings_for(ids[start : start + CHUNK])
        mine = [(mid, blob) for mid, uid, blob in rows if uid == user_id]
        if not mine:
            return None
        vectors = np.vstack([np.frombuffer(blob, dtype=np.float32) for _, blob in mine])
        index = PerUserIndex(vectors.shape[1], "database")
        await self._run(index.add, user_id, [mid for mid, _ in mine], vectors)
        # The state the rows were read at: a vector added meanwhile changes it, and the next
        # search loads the shard again rather than trusting one that lacks it.
        self._shards[user_id] = ((len(mine), max(mid for mid, _ in mine)), index)
        self.shard_loads += 1
        while self.cached_vectors > MAX_CACHED_VECTORS and len(self._shards) > 1:
            self._shards.popitem(last=False)
        return index

    async def search_scored(
        self,
        user_id: str,
        query: Vectors,
        k: int,
        allowed: AbstractSet[int] | None = None,
        scopes: Iterable[str] | None = None,
    ) -> tuple[list[tuple[int, float]], float, dict[int, float]]:
        """The top k, the lowest score among them, and every score known."""
        shard = await self._shard(user_id)
        if shard is not None:
            result: tuple[list[tuple[int, float]], float, dict[int, float]] = await self._run(
                shard.search_scored, user_id, query, k, allowed
            )
            return result
        top = await self._store.dense_search(user_id, _bytes(query), k, scopes)
        if allowed is not None:
            top = [(mid, score) for mid, score in top if mid in allowed]
        floor = top[-1][1] if top else 0.0
        return top, floor, dict(top)

    async def scores_for(
        self,
        user_id: str,
        ids: Sequence[int],
        query: Vectors,
        allowed: AbstractSet[int] | None = None,
    ) -> dict[int, float]:
        wanted = [mid for mid in ids if allowed is None or mid in allowed]
        if not wanted:
            return {}
        cached = self._shards.get(user_id)
        if cached is not None:  # checked by the search just before, in the same retrieve
            scores: dict[int, float] = await self._run(cached[1].scores_for, user_id, wanted, query)
            return scores
        return await self._store.dense_scores(user_id, _bytes(query), wanted)

    async def vectors_of(self, user_id: str, ids: Sequence[int], dim: int) -> np.ndarray:
        """``PerUserIndex.vectors_of`` from the cached shard, else from the stored rows."""
        cached = self._shards.get(user_id)
        if cached is not None:  # checked by the search just before, in the same retrieve
            found: np.ndarray = await self._run(cached[1].vectors_of, user_id, ids)
            return found
        out = np.full((len(ids), dim), np.nan, dtype=np.float32)
        row_of = {mid: row for row, mid in enumerate(ids)}
        for mid, uid, blob in await self._store.embeddings_for(list(ids)) if ids else []:
            vector = np.frombuffer(blob, dtype=np.float32)
            if uid == user_id and mid in row_of and len(vector) == dim:
                out[row_of[mid]] = vector
        return out


def _bytes(vector: Vectors) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()
