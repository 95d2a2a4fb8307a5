"""An embedding of a memory's old text that lands after an edit is never installed.

The encoder is a real hashing encoder (deterministic vectors, so "the vector of this text" is
exact) whose ``encode`` holds any batch with a marked text until the test releases it, handed in
through ``MemorySystem(encoder=...)``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from memory import HashingEncoder, MemorySystem
from memory.encoder import Vectors
from memory.index import PerUserIndex, watermark_path
from memory.recovery import DB_NAME, INDEX_NAME
from memory.storage.postgres import PostgresStore
from memory.storage.protocol import Store
from memory.storage.sqlite import SqliteStore
from tests.conftest import test_settings

pytestmark = pytest.mark.both_backends
DEADLINE = 20.0
OLD = "held: my cat is called Tom"
NEW = "my dog is called Rex"


class HeldEncoder(HashingEncoder):
    """Ready at once; a batch holding a text that starts with ``held`` waits for ``release``;
    ``saw`` is set when a batch holds ``NEW``."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.holding = asyncio.Event()
        self.saw = asyncio.Event()

    async def encode(self, texts: Sequence[str]) -> Vectors:
        if any(t.startswith("held") for t in texts):
            self.holding.set()
            await self.release.wait()
        if NEW in texts:
            self.saw.set()
        return await super().encode(texts)


def vector(text: str) -> bytes:
    return bytes(HashingEncoder().encode_now([text])[0].tobytes())


async def stored_vector(backend: str, where: str, memory_id: int) -> bytes | None:
    """The embedding the database holds for ``memory_id``, read with a store of its own."""
    store: Store
    if backend == "postgres":
        store = PostgresStore(where, vector_dim=384)
        await store.open()
    else:
        store = SqliteStore(Path(where) / DB_NAME, readonly=True)
        await store.open(integrity_check=False)
    try:
        rows = await store.embeddings_for([memory_id])
    finally:
        await store.close()
    return bytes(rows[0][2]) if rows else None


async def test_an_old_texts_embedding_landing_after_an_edit_is_dropped(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    folder = tmp_path / "data"
    storage: dict[str, object] = {}
    where = str(folder)
    if backend == "postgres":
        where = request.getfixturevalue("make_postgres_database")()
        storage = {"backend": "postgres", "postgres_url": where}
    settings = test_settings(storage=storage, retrieval={"pending_wait_ms": 60_000})
    encoder = HeldEncoder()
    async with asyncio.timeout(DEADLINE):
        async with MemorySystem(folder, settings=settings, encoder=encoder) as ms:
            memory = await ms.save_memory("ann", OLD, source_id="msg-1")
            await encoder.holding.wait()  # the old text's batch is in the model now
            [edited] = await ms.edit_source("msg-1", NEW)
            assert edited.text == NEW
            encoder.release.set()
            # The embedder is sequential: when it takes the new text, the old text's batch has
            # landed. The retrieve then waits for the batch in flight (the new text's).
            await encoder.saw.wait()
            found = await ms.retrieve_memory("ann", "what is my dog called?")
            assert [r.memory.text for r in found] == [NEW]
            assert "not-embedded" not in found[0].rankers
            assert (await ms.stats())["pending_embeddings"] == 0
        assert await stored_vector(backend, where, memory.id) == vector(NEW)
    if backend == "sqlite":  # the saved FAISS file holds the new text's vector, and only it
        path = folder / INDEX_NAME
        mark = json.loads(watermark_path(path).read_text())
        index = PerUserIndex.load(path, {memory.id: "ann"}, mark["model"], mark["database_id"])
        new = np.frombuffer(vector(NEW), dtype=np.float32)
        old = np.frombuffer(vector(OLD), dtype=np.float32)
        assert index.scores_for("ann", [memory.id], new)[memory.id] == pytest.approx(1.0)
        assert index.scores_for("ann", [memory.id], old)[memory.id] == pytest.approx(float(old @ new))
        assert len(index) == 1
