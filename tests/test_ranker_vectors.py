"""The ranker's vector features and question kinds (memory/ranker_vectors.py), and the pool's
vectors as the running system reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memory import HashingEncoder, MemorySystem
from memory.index import PerUserIndex
from memory.inspector import Inspector
from memory.ranker import FEATURES
from memory.ranker_vectors import QUESTION_FEATURES, VECTOR_FEATURES, question_kinds, vector_features
from memory.retrieval import Retriever
from memory.storage.protocol import DenseSearch
from memory.store_dense import StoreDense
from tests.conftest import test_settings

COLUMN = {name: i for i, name in enumerate(VECTOR_FEATURES)}


def _unit(rows: list[list[float]]) -> np.ndarray:
    matrix = np.asarray(rows, dtype=np.float64)
    return np.asarray(matrix / np.linalg.norm(matrix, axis=1, keepdims=True))


def test_the_centered_cosine_ignores_what_every_candidate_shares() -> None:
    rng = np.random.default_rng(3)
    vectors, query = rng.normal(size=(6, 8)), rng.normal(size=8)
    shared = 5 * rng.normal(size=8)  # a topic the whole pool has in common
    plain = vector_features(query, vectors, len(vectors))
    shifted = vector_features(query + shared, vectors + shared, len(vectors))
    assert np.allclose(plain, shifted, atol=1e-4)  # float32, as the vectors are stored
    # ... while the raw cosine is dominated by it: every candidate looks alike to the query
    raw = _unit((vectors + shared).tolist()) @ ((query + shared) / np.linalg.norm(query + shared))
    assert np.ptp(raw) < np.ptp(plain[:, COLUMN["dense_centered"]])


def test_the_candidate_most_like_the_query_once_centered_ranks_first() -> None:
    vectors = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    out = vector_features(np.array([0.0, 0.9, 0.1]), vectors, len(vectors))
    assert int(np.argmax(out[:, COLUMN["dense_centered"]])) == 1
    assert out[1, COLUMN["rank_centered_log"]] == 0.0
    assert out[:, COLUMN["dense_centered_minmax"]].max() == 1.0
    assert out[:, COLUMN["dense_centered_minmax"]].min() == 0.0


def test_likeness_reads_the_pools_first_candidates_and_never_the_candidate_itself() -> None:
    # pool order: 0 is the best fused; 1 says the same as 0; 2 and 3 point elsewhere
    vectors = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    out = vector_features(np.ones(3), vectors, len(vectors))
    like_top1 = out[:, COLUMN["like_top1"]]
    assert like_top1[0] == -1.0  # itself is not its own neighbour
    assert like_top1[1] == like_top1.max() and like_top1[1] > 0.9
    assert (out[:, COLUMN["like_top3"]] >= like_top1).all()


def test_a_candidate_without_a_vector_gets_the_lowest_score_and_no_likeness() -> None:
    vectors = np.array([[1.0, 0.0, 0.0], [np.nan, np.nan, np.nan], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    out = vector_features(np.array([1.0, 0.2, 0.0]), vectors, len(vectors))
    assert out[1, COLUMN["dense_centered"]] == out[[0, 2, 3], COLUMN["dense_centered"]].min()
    assert out[1, COLUMN["like_top1"] :].tolist() == [0.0] * 4
    assert not np.isnan(out).any()
    no_model = np.zeros((4, len(VECTOR_FEATURES))).tolist()  # a lexical-only retrieve: no vectors
    assert vector_features(None, None, 4).tolist() == no_model
    assert vector_features(None, vectors, 4).tolist() == no_model
    assert vector_features(np.ones(3), np.full((2, 3), np.nan), 2).tolist() == [[0.0] * 7] * 2
    with pytest.raises(ValueError, match="3 vectors for 4 candidates"):
        vector_features(np.ones(3), vectors[:3], 4)


@pytest.mark.parametrize(
    ("question", "kinds"),
    [
        ("What did Ana paint last week?", {"what"}),
        ("When did Ana go to Lisbon?", {"when"}),
        ("Would Ana likely enjoy a museum?", {"likely"}),
        ("Is Ana a painter?", {"yes_no"}),
        ("Why did Ana and Rex go outside?", {"why", "both"}),
        ("How many kinds of cake does Ana bake?", {"how", "kinds_of"}),
        ("Where and with whom does Ana live?", {"where", "both"}),
    ],
)
def test_question_kinds(question: str, kinds: set[str]) -> None:
    names = [name.removeprefix("asks_") for name in QUESTION_FEATURES[: len(QUESTION_FEATURES) // 2]]
    flags = question_kinds(question)
    assert {name for name, flag in zip(names, flags, strict=True) if flag} == kinds


async def _inline(fn: Any, *args: Any) -> Any:
    return fn(*args)


@pytest.mark.parametrize("dense_path", ["faiss index", "store rows", "store shard"])
async def test_the_pool_carries_each_candidates_own_stored_vector(
    tmp_path: Path, dense_path: str, request: pytest.FixtureRequest
) -> None:
    """On SQLite the vectors come from the FAISS index; on PostgreSQL from the rows (a small
    user) or from the user's cached FAISS shard (a user above ``faiss_shard_threshold``)."""
    texts = ["my sister lives in Lisbon", "I have a dog named Rex", "I'm allergic to peanuts"]
    settings = test_settings()
    if dense_path != "faiss index":
        storage = {"backend": "postgres", "postgres_url": request.getfixturevalue("postgres_url")}
        settings = test_settings(storage=storage)
    async with MemorySystem(tmp_path, settings=settings, encoder=HashingEncoder()) as ms:
        saved = [await ms.save_memory("ana", text) for text in texts]
        await ms.save_memory("bob", "my sister lives in Lisbon")  # another user's twin: never read
        assert await ms.wait_ready()
        for user in ("ana", "bob"):
            await ms.retrieve_memory(user, "sister")  # embeds the asker's pending memories
        assert (await ms.stats())["pending_embeddings"] == 0
    encoder = HashingEncoder()
    want = {m.id: row for m, row in zip(saved, await encoder.encode(texts), strict=True)}
    query = "where does my sister live"
    query_vector: np.ndarray = (await encoder.encode([query]))[0]

    async def embed() -> np.ndarray:
        return query_vector

    async with Inspector(tmp_path, settings) as inspector:
        store = inspector.store
        index: PerUserIndex | StoreDense
        if dense_path == "faiss index":
            index = PerUserIndex(len(query_vector), "hashing")
            rows = await store.embeddings_for(await store.memory_ids("ana"))
            index.add("ana", [r[0] for r in rows], np.vstack([np.frombuffer(r[2], np.float32) for r in rows]))
            other = await store.memory_ids("bob")
            assert np.isnan(index.vectors_of("ana", other)).all()  # bob's vector is not ana's
        else:
            assert isinstance(store, DenseSearch)  # PostgreSQL keeps and searches the vectors itself
            index = StoreDense(store, _inline, 10_000 if dense_path == "store rows" else 0)
        retriever = Retriever(store, settings.retrieval, _inline)
        pool = await retriever.pool(index, "ana", query, embed, None)
    assert {m.id for m in pool.memories} == set(want)
    assert pool.vectors is not None and pool.query_vector is not None
    for memory, vector in zip(pool.memories, pool.vectors, strict=True):
        assert np.allclose(vector, want[memory.id], atol=1e-6)
    features = pool.features()
    assert features.shape == (3, len(FEATURES))
    first = FEATURES.index(VECTOR_FEATURES[0])
    assert np.ptp(features[:, first]) > 0  # the vector columns are filled, not left at 0


async def test_an_exchange_is_embedded_without_the_bots_reply(tmp_path: Path) -> None:
    """The bot's reply quotes older memories ("Last time you told me ..."): in the vector it
    made a new memory look like the one quoted."""
    settings = test_settings()
    async with MemorySystem(tmp_path, settings=settings, encoder=HashingEncoder()) as ms:
        reply = 'Last time you told me "I play the cello"'
        ctx = await ms.update_context("sam", "I have a dog named Rex", reply)
        assert await ms.wait_ready()
        await ms.retrieve_memory("sam", "dog")  # embeds the asker's pending memories
        assert (await ms.stats())["pending_embeddings"] == 0
    async with Inspector(tmp_path, settings) as inspector:
        ids = await inspector.store.memory_ids("sam")
        memories = await inspector.store.memories_by_id(ids)
        rows = await inspector.store.embeddings_for(ids)
    assert ctx.version >= 1 and len(rows) == 1
    text = memories[rows[0][0]].text
    assert "cello" in text  # the memory keeps the whole exchange ...
    (person,) = await HashingEncoder().encode([text.split("\nBot: ", 1)[0]])
    (whole,) = await HashingEncoder().encode([text])
    stored = np.frombuffer(rows[0][2], dtype=np.float32)
    assert np.allclose(stored, person) and not np.allclose(stored, whole)  # ... its vector does not
