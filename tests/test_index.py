"""The FAISS index heals on start: missing, corrupt or stale files give a fresh build's results."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from memory import MemorySystem
from memory.index import watermark_path
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
        assert ms.report is not None
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
    async with make_system() as ms:
        assert ms.report is not None
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
        assert ms.report is not None
        assert any("re-embedding" in note for note in ms.report.notes)
        assert ms.report.embeddings_pending == 8
        results = await ms.retrieve_memory("alice", "garden tomatoes")
        assert results and (await ms.stats())["index_vectors"] == 8
