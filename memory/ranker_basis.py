"""Where a candidate sits in the embedding model's main directions: a few ranker features.

Why: the cosine to the query says how near a memory is to *this* question, not what sort of
memory it is. Greetings, thanks and small talk ("Hey Mel, long time no talk!") sit together
in one region of the embedding space and are rarely the evidence; statements about what the
speaker did sit elsewhere. The first principal directions of many memories' vectors separate
such sorts without any label, and a candidate's coordinates along them let the regression
and the trees learn which sorts answer questions. On locomo-dev, leave-one-conversation-out
Recall@10 of the stack 0.836 -> 0.840 (mean over five LightGBM seeds; the basis fitted on the
four training conversations of each fold: benchmarks/train_ranker.py).

The basis belongs to one embedding model (its vectors' directions mean nothing in another
model's space): it is fitted at training time on locomo-dev's memory vectors, shipped in that
model's ranker weights file, and applied only to vectors of the model it names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memory import models

PRINCIPAL = 8  # directions kept: 4 and 6 measured lower, 12 and 16 no higher (LOCO)
PRINCIPAL_FEATURES: tuple[str, ...] = tuple(f"principal_{i + 1}" for i in range(PRINCIPAL))


@dataclass(frozen=True, slots=True, eq=False)
class Basis:
    """The mean and the first principal directions (unit rows) of one model's memory vectors."""

    model: str  # models.canonical name of the embedding model whose vectors were fitted
    mean: np.ndarray
    components: np.ndarray  # PRINCIPAL x dim
    # (v - mean) @ components.T in float32, as the vectors are stored: in float64 the 60 x 384
    # difference of a pool cost 0.1 ms a query.
    _mean32: np.ndarray = field(init=False, repr=False)
    _projection: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_mean32", self.mean.astype(np.float32))
        object.__setattr__(self, "_projection", np.ascontiguousarray(self.components.T, dtype=np.float32))

    @classmethod
    def fit(cls, model: str, vectors: np.ndarray) -> Basis:
        """The basis of ``vectors`` (one row per memory), by a singular value decomposition;
        each direction's sign is fixed (its largest loading positive) so a refit is stable."""
        matrix = np.asarray(vectors, dtype=np.float64)
        if matrix.ndim != 2 or len(matrix) <= PRINCIPAL:
            raise ValueError(f"a basis needs more than {PRINCIPAL} vectors, got shape {matrix.shape}")
        mean = matrix.mean(axis=0)
        _, _, rows = np.linalg.svd(matrix - mean, full_matrices=False)
        components = rows[:PRINCIPAL]
        signs = np.sign(components[np.arange(PRINCIPAL), np.abs(components).argmax(axis=1)])
        return cls(models.canonical(model), mean, components * signs[:, None])

    def serves(self, model: str) -> bool:
        """Whether vectors of the embedding model ``model`` may be projected on this basis."""
        return models.canonical(model) == self.model

    def coordinates(self, vectors: np.ndarray | None, n: int) -> np.ndarray:
        """The ``PRINCIPAL_FEATURES`` columns for ``n`` candidates: each vector's coordinates.

        0 (the mean's coordinates) for a candidate without a vector (a NaN row), and for all
        when there are no vectors or they have another size than the basis (an encoder that
        is not the model named, such as a test's: its directions mean nothing here)."""
        out = np.zeros((n, PRINCIPAL))
        if vectors is None or n == 0 or vectors.ndim != 2 or vectors.shape[1] != self.mean.shape[0]:
            return out
        if len(vectors) != n:
            raise ValueError(f"{len(vectors)} vectors for {n} candidates")
        known = ~np.isnan(vectors[:, 0])
        if known.all():  # the usual pool: every candidate embedded
            return np.asarray((vectors - self._mean32) @ self._projection, dtype=np.float64)
        out[known] = (vectors[known] - self._mean32) @ self._projection
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "mean": [round(float(v), 8) for v in self.mean],
            "components": [[round(float(v), 8) for v in row] for row in self.components],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Basis:
        mean = np.asarray(data["mean"], dtype=np.float64)
        components = np.asarray(data["components"], dtype=np.float64)
        if mean.ndim != 1 or components.shape != (PRINCIPAL, mean.shape[0]):
            raise ValueError(f"a basis of shape {components.shape} for a mean of shape {mean.shape}")
        return cls(str(data["model"]), mean, components)


def principal_features(basis: Basis | None, vectors: np.ndarray | None, n: int) -> np.ndarray:
    """The ``PRINCIPAL_FEATURES`` columns; all 0 without a basis (a model it does not serve)."""
    return np.zeros((n, PRINCIPAL)) if basis is None else basis.coordinates(vectors, n)
