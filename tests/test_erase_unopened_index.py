"""A process that never embeds (memory-admin's changes) never opens the index, and still
erases what it forgets from the index file (``memory.index.erase_from_file``) before it closes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from memory import HashingEncoder, MemorySystem
from memory.encoder import DeferredEncoder
from memory.index import PerUserIndex, watermark_path
from memory.recovery import INDEX_NAME
from tests.conftest import test_settings

SETTINGS = test_settings(retrieval={"own_pending_per_query": 4096})


def ids_in_file(path: Path) -> list[int]:
    index: Any = faiss.deserialize_index(np.frombuffer(path.read_bytes(), dtype=np.uint8))
    ids: list[int] = faiss.vector_to_array(index.id_map).tolist()
    return ids


async def two_users(folder: Path) -> tuple[list[int], list[int]]:
    async with MemorySystem(folder, settings=SETTINGS, encoder=HashingEncoder()) as ms:
        assert await ms.wait_ready()
        kept = [(await ms.save_memory("bob", f"bob likes tea number {i}")).id for i in range(5)]
        gone = [(await ms.save_memory("eve", f"eve likes coffee number {i}")).id for i in range(5)]
        for user in ("bob", "eve"):  # each retrieve embeds the user's own: none left pending
            await ms.retrieve_memory(user, "likes")
    assert sorted(ids_in_file(folder / INDEX_NAME)) == sorted(kept + gone)
    return kept, gone


async def test_a_forget_without_the_model_erases_the_vectors_from_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    kept, _ = await two_users(folder)
    deferred = DeferredEncoder(HashingEncoder().name)  # the model's name, never its model
    async with MemorySystem(folder, settings=SETTINGS, encoder=deferred) as ms:
        assert ms.report is not None and str(ms.report.index_action).startswith("not opened")
        assert await ms.forget_user("eve")
    path = folder / INDEX_NAME
    assert sorted(ids_in_file(path)) == sorted(kept)
    mark = json.loads(watermark_path(path).read_text())
    assert (mark["count"], mark["max_id"]) == (5, max(kept))
    # The file is whole and its watermark true: the next start loads it as it is.
    index = PerUserIndex.load(path, dict.fromkeys(kept, "bob"), mark["model"], mark["database_id"])
    assert len(index) == 5 and index.dropped == 0
    async with MemorySystem(folder, settings=SETTINGS, encoder=HashingEncoder()) as ms:
        assert await ms.wait_ready()
        assert ms.report is not None and ms.report.index_action == "loaded 5 vectors"


async def test_an_unreadable_index_file_is_deleted_by_such_a_forget(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    kept, _ = await two_users(folder)
    path = folder / INDEX_NAME
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # torn: what it holds cannot be told apart
    deferred = DeferredEncoder(HashingEncoder().name)
    async with MemorySystem(folder, settings=SETTINGS, encoder=deferred) as ms:
        assert await ms.forget_user("eve")
    assert not path.exists() and not watermark_path(path).exists()
    async with MemorySystem(folder, settings=SETTINGS, encoder=HashingEncoder()) as ms:
        assert await ms.wait_ready()
        assert ms.report is not None and str(ms.report.index_action).startswith("rebuilt from 5")
        assert (await ms.stats())["index_vectors"] == len(kept)
