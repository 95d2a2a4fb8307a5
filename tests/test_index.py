"""The FAISS index heals on start: missing, corrupt or stale files give a fresh build's results."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from memory import MemorySystem
from memory.encoder import normalise
from memory.index import SCORE_ALL_LIMIT, PerUserIndex, watermark_path
from memory.recovery import INDEX_NAME

QUERIES = ["garden tomatoes", "river boat trip", "guitar lesson", "purple coffee winter", "rocket"]
TOPICS = ["garden tomatoes", "river boat", "guitar lesson", "purple scarf", "coffee beans", "winter rocket"]


async def _fill(ms: MemorySystem, start: int, count: int) -> list[int]:
    ids = []
    for i in range(start, start + count):
        for user in ("alice", "bob"):
            memory = await ms.save_memory(user, f"{TOPICS[i % len(TOPICS)]} story number {i}")
            ids.append(memory.id)
    return ids


async def _answers(ms: MemorySystem) -> list[list[tuple[int, float]]]:
    return [
        [(r.memory.id, round(r.score, 5)) for r in await ms.retrieve_memory(user, q, k=10)]
        for user in ("alice", "bob")
        for q in QUERIES
    ]


async def _fresh_build_answers(
    make_system: Callable[..., MemorySystem], data_dir: Path, tmp: Path
) -> list[list[tuple[int, float]]]:
    copy = tmp / "fresh"
    shutil.copytree(data_dir, copy)
    (copy / INDEX_NAME).unlink(missing_ok=True)
    async with make_system(copy) as ms:
        assert await ms.wait_ready()  # the index opens in the background
        assert ms.report is not None and ms.report.index_action is not None
        assert ms.report.index_action.startswith("rebuilt")
        return await _answers(ms)


@pytest.mark.parametrize("damage", ["deleted", "garbage", "truncated", "watermark_lies", "stale"])
async def test_damaged_index_heals_to_a_fresh_builds_results(
    tmp_path: Path, make_system: Callable[..., MemorySystem], damage: str
) -> None:
    data_dir = tmp_path / "data"
    index = data_dir / INDEX_NAME
    async with make_system(data_dir) as ms:
        first = await _fill(ms, 0, 20)
    old_index, old_mark = index.read_bytes(), watermark_path(index).read_bytes()
    async with make_system(data_dir) as ms:
        await _fill(ms, 20, 15)
        await ms.forget_memory("alice", first[0])
        await ms.retrieve_memory("alice", "x")
        expected_vectors = (await ms.stats())["index_vectors"]
    if damage == "deleted":
        index.unlink()
    elif damage == "garbage":
        index.write_bytes(b"not a faiss index at all" * 10)
    elif damage == "truncated":
        index.write_bytes(index.read_bytes()[:500])
    elif damage == "watermark_lies":
        watermark_path(index).write_text('{"count": 3, "max_id": 3, "dim": 384, "model": "hashing-384"}')
    else:  # an index from an older state: before 30 memories were added and one forgotten
        index.write_bytes(old_index)
        watermark_path(index).write_bytes(old_mark)
    async with make_system(data_dir) as ms:
        assert ms.report is not None and await ms.wait_ready()
        action = ms.report.index_action or ""
        assert action.startswith("rebuilt") or "caught up" in action, action
        assert (await ms.stats())["index_vectors"] == expected_vectors
        healed = await _answers(ms)
    assert healed == await _fresh_build_answers(make_system, data_dir, tmp_path)


async def test_intact_index_is_loaded_not_rebuilt(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    async with make_system() as ms:
        await _fill(ms, 0, 5)
        await _answers(ms)  # each user's retrieve embeds their own: none is left for the next start
    async with make_system() as ms:
        assert ms.report is not None and await ms.wait_ready()
        assert ms.report.index_action == "loaded 10 vectors"


async def test_rebuild_index_reports_progress_and_keeps_results(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    async with make_system() as ms:
        await _fill(ms, 0, 10)
        before = await _answers(ms)
        progress: list[tuple[int, int]] = []
        assert await ms.rebuild_index(lambda done, total: progress.append((done, total))) == 20
        assert progress[-1] == (20, 20)
        assert await _answers(ms) == before


async def test_changing_the_model_re_embeds_every_memory(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    async with make_system(encoder={"hashing_dim": 384}) as ms:
        await _fill(ms, 0, 4)
    from memory import HashingEncoder
    from memory import MemorySystem as System
    from tests.conftest import test_settings

    async with System(tmp_path / "data", settings=test_settings(), encoder=HashingEncoder(128)) as ms:
        assert ms.report is not None and await ms.wait_ready()
        assert any("re-embedding" in note for note in ms.report.notes)
        assert ms.report.embeddings_pending == 8
        # A retrieve waits for the asking user's own memories only: ask as both users.
        results = await ms.retrieve_memory("alice", "garden tomatoes")
        assert results and all("not-embedded" not in r.rankers for r in results)
        await ms.retrieve_memory("bob", "garden tomatoes")  # bob's own are embedded by his
        assert (await ms.stats())["index_vectors"] == 8


@pytest.mark.parametrize("count", [7, SCORE_ALL_LIMIT + 5])
def test_search_scored_agrees_with_faiss_search_and_holds_only_the_users_scores(count: int) -> None:
    rng = np.random.default_rng(count)
    index = PerUserIndex(16, "test")
    for user, first_id in (("alice", 1), ("bob", 100_000)):
        vectors = normalise(rng.standard_normal((count, 16)).astype(np.float32))
        index.add(user, list(range(first_id, first_id + count)), vectors)
    index.remove([3])  # a removed vector must leave the scored storage too
    query = normalise(rng.standard_normal((1, 16)).astype(np.float32))[0]
    top, floor, known = index.search_scored("alice", query, 5)
    expected_top, expected_floor = index.search_with_floor("alice", query, 5)
    assert [mid for mid, _ in top] == [mid for mid, _ in expected_top]
    assert np.allclose([s for _, s in top], [s for _, s in expected_top], atol=1e-5)
    assert floor == pytest.approx(expected_floor, abs=1e-5)
    assert all(index.owner(mid) == "alice" for mid in known) and 3 not in known
    if count <= SCORE_ALL_LIMIT:  # scored whole: every one of alice's vectors, exactly
        assert len(known) == count - 1
        exact = index.scores_for("alice", sorted(known), query)
        assert all(known[mid] == pytest.approx(exact[mid], abs=1e-5) for mid in known)
    else:
        assert known == dict(top)
    assert index.search_scored("carol", query, 5) == ([], 0.0, {})


def test_an_id_given_twice_in_one_add_is_held_once_and_the_saved_file_loads(tmp_path: Path) -> None:
    """FAISS would keep both entries while the owner map counts one: the file would hold one
    vector more than its watermark, and every later load (and `verify`) would refuse it."""
    rng = np.random.default_rng(4)
    index = PerUserIndex(8, "hashing")
    first, again = normalise(rng.normal(size=(2, 8)).astype(np.float32))
    index.add("ana", [7, 7, 9], np.vstack([first, again, first]))
    index.add("ana", [9], again[None, :])  # held already: not added a second time either
    assert len(index) == 2 and index.count("ana") == 2
    assert np.allclose(index.vectors_of("ana", [7]), first[None, :], atol=1e-6)  # the first kept
    path = tmp_path / INDEX_NAME
    mark = index.save(path)
    assert mark.count == 2
    loaded = PerUserIndex.load(path, {7: "ana", 9: "ana"}, "hashing")
    assert len(loaded) == 2 and loaded.count("ana") == 2
