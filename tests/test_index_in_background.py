"""The index opens and the backlog is read in the background: start() waits for neither.

The model's load is held by the test (an encoder whose ``load()`` waits on an event, handed in
through the public constructor); the index opens beside it, so whatever happens before the gate
opens happens while the index may still be loading.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from memory import HashingEncoder, MemorySystem
from memory.recovery import INDEX_NAME
from tests.conftest import test_settings

DEADLINE = 20.0


class GatedEncoder(HashingEncoder):
    """A hashing encoder whose model "loads" when the test sets ``gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def load(self) -> None:
        await self.gate.wait()


def ids_in_file(folder: Path) -> set[int]:
    index: Any = faiss.deserialize_index(np.frombuffer((folder / INDEX_NAME).read_bytes(), dtype=np.uint8))
    return set(faiss.vector_to_array(index.id_map).tolist())


async def test_a_forget_before_the_index_is_open_leaves_no_vector(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    # No wait for the model: a retrieve before it is ready ranks lexically at once.
    settings = test_settings(retrieval={"own_pending_per_query": 4096}, encoder={"ready_wait_ms": 0})
    async with MemorySystem(folder, settings=settings, encoder=HashingEncoder()) as ms:
        assert await ms.wait_ready()
        kept = [await ms.save_memory("bob", f"bob likes tea number {i}") for i in range(5)]
        gone = [await ms.save_memory("eve", f"eve likes coffee number {i}") for i in range(5)]
        for user in ("bob", "eve"):  # each retrieve embeds the user's own: none left pending
            await ms.retrieve_memory(user, "likes")
    assert ids_in_file(folder) == {m.id for m in kept + gone}
    encoder = GatedEncoder()
    async with asyncio.timeout(DEADLINE), MemorySystem(folder, settings=settings, encoder=encoder) as ms:
        assert (await ms.stats())["encoder_state"] == "loading"
        found = await ms.retrieve_memory("bob", "tea", k=5)  # lexical meanwhile, and says so
        assert {r.memory.id for r in found} == {m.id for m in kept}
        assert all("lexical-only" in r.rankers for r in found)
        assert await ms.forget_user("eve")
        encoder.gate.set()
        assert await ms.wait_ready()
        stats = await ms.stats()
        assert (stats["index_vectors"], stats["index_users"], stats["pending_embeddings"]) == (5, 1, 0)
        dense = await ms.retrieve_memory("bob", "tea", k=5)
        assert all("dense" in r.rankers for r in dense)
    assert ids_in_file(folder) == {m.id for m in kept}
