"""Dense search where the vectors live in the database (PostgreSQL + pgvector): the same two
questions the per-process FAISS index answers, asked of the store with an exact per-user scan."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet

import numpy as np
import numpy.typing as npt

from memory.storage.protocol import DenseSearch


class StoreDense:
    """``PerUserIndex.search_scored`` / ``scores_for`` over a ``DenseSearch`` store."""

    def __init__(self, store: DenseSearch) -> None:
        self._store = store

    async def search_scored(
        self,
        user_id: str,
        query: npt.NDArray[np.float32],
        k: int,
        allowed: AbstractSet[int] | None = None,
        scopes: Iterable[str] | None = None,
    ) -> tuple[list[tuple[int, float]], float, dict[int, float]]:
        """The top k, the lowest score among them, and every score known (the top k)."""
        top = await self._store.dense_search(user_id, _bytes(query), k, scopes)
        if allowed is not None:
            top = [(mid, score) for mid, score in top if mid in allowed]
        floor = top[-1][1] if top else 0.0
        return top, floor, dict(top)

    async def scores_for(
        self,
        user_id: str,
        ids: Sequence[int],
        query: npt.NDArray[np.float32],
        allowed: AbstractSet[int] | None = None,
    ) -> dict[int, float]:
        wanted = [mid for mid in ids if allowed is None or mid in allowed]
        return await self._store.dense_scores(user_id, _bytes(query), wanted) if wanted else {}


def _bytes(vector: npt.NDArray[np.float32]) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()
