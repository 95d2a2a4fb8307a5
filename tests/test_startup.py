"""Start-up: contexts first, the model in the background; read-your-writes at the asker's cost.

The encoders here are real encoders (hashing vectors) whose ``load()`` or ``encode()`` waits on
an event the test controls, handed in through ``MemorySystem(encoder=...)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from bot.health import judge
from memory import EncoderError, HashingEncoder, MemorySystem, SystemState
from memory.encoder import Vectors
from tests.conftest import test_settings

DEADLINE = 10.0


class GatedEncoder(HashingEncoder):
    """A hashing encoder whose model "loads" when the test sets ``gate`` (or fails with ``error``)."""

    def __init__(self, error: Exception | None = None) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.loading = asyncio.Event()
        self._error = error

    async def load(self) -> None:
        self.loading.set()
        if self._error is not None:
            raise self._error
        await self.gate.wait()


class SlowTextsEncoder(HashingEncoder):
    """Ready at once; a call holding any text that starts with ``slow`` waits for ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.blocked = asyncio.Event()
        self.batches: list[list[str]] = []

    async def encode(self, texts: Sequence[str]) -> Vectors:
        self.batches.append(list(texts))
        if any(t.startswith("slow") for t in texts):
            self.blocked.set()
            await self.release.wait()
        return await super().encode(texts)


def system(folder: Path, model: Any, **sections: dict[str, Any]) -> MemorySystem:
    return MemorySystem(folder, settings=test_settings(**sections), encoder=model)


async def test_contexts_work_before_the_model_is_ready(tmp_path: Path) -> None:
    encoder = GatedEncoder()
    async with asyncio.timeout(DEADLINE), system(tmp_path / "data", encoder) as ms:
        await encoder.loading.wait()
        ctx = await ms.update_context("ann", "I love hiking", "Nice!", display_name="Ann")
        assert ctx.conversations_count == 1
        assert (await ms.get_user_context("ann")) is ctx
        await ms.set_preference("ann", "food", "ramen")
        assert (await ms.get_user_context("ann")).preferences["food"] == "ramen"
        saved = await ms.save_memory("ann", "my sister lives in Lyon")
        assert [h.version for h in await ms.history("ann")] == [1, 2]
        stats = await ms.stats()
        assert stats["encoder_state"] == "loading"
        assert stats["pending_embeddings"] == 2  # the exchange and the note wait for the model
        assert ms.health()["tasks"]["model loader"] == "starting"
        assert judge(stats, None, None).healthy
        encoder.gate.set()
        assert await ms.wait_ready()
        found = await ms.retrieve_memory("ann", "where does my sister live?")
        assert found[0].memory.id == saved.id
        assert "dense" in found[0].rankers and "lexical-only" not in found[0].rankers
        stats = await ms.stats()
        assert stats["encoder_state"] == "ready" and stats["encoder_load_seconds"] is not None
        assert stats["pending_embeddings"] == 0 and stats["embedded_since_start"] == 2
        assert ms.health()["tasks"]["model loader"] == "ok"


async def test_retrieve_while_loading_is_lexical_and_marked(tmp_path: Path) -> None:
    encoder = GatedEncoder()
    data = tmp_path / "data"
    async with asyncio.timeout(DEADLINE), system(data, encoder, encoder={"ready_wait_ms": 0}) as ms:
        await ms.save_memory("ann", "my sister lives in Lyon")
        await ms.save_memory("ann", "I drive a red bike")
        found = await ms.retrieve_memory("ann", "where does my sister live?")
        assert [r.memory.text for r in found][:1] == ["my sister lives in Lyon"]
        assert all("lexical-only" in r.rankers and "dense" not in r.rankers for r in found)
        assert encoder.calls == 0  # the query was never embedded
        encoder.gate.set()


async def test_retrieve_waits_up_to_ready_wait_ms_for_the_model(tmp_path: Path) -> None:
    encoder = GatedEncoder()
    data = tmp_path / "data"
    async with asyncio.timeout(DEADLINE), system(data, encoder, encoder={"ready_wait_ms": 60_000}) as ms:
        await ms.save_memory("ann", "my sister lives in Lyon")
        query = asyncio.ensure_future(ms.retrieve_memory("ann", "where does my sister live?"))
        await encoder.loading.wait()
        assert not query.done()
        encoder.gate.set()
        found = await query
        assert "dense" in found[0].rankers and "lexical-only" not in found[0].rankers


async def test_a_model_that_fails_to_load_leaves_contexts_working(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    encoder = GatedEncoder(EncoderError("no model files in /nowhere; install the model package"))
    async with asyncio.timeout(DEADLINE), system(tmp_path / "data", encoder) as ms:
        assert await ms.wait_ready() is False
        assert "no model files in /nowhere" in caplog.text
        ctx = await ms.update_context("ann", "hello there", "hi")
        assert ctx.conversations_count == 1
        stats = await ms.stats()
        assert stats["encoder_state"] == "failed"
        assert "no model files in /nowhere" in stats["encoder_error"]
        assert ms.state is SystemState.RUNNING
        loader = ms.health()["tasks"]["model loader"]
        assert loader.startswith("failed to load the model: no model files")
        verdict = judge(stats, None, None)
        assert not verdict.healthy and "model loader" in verdict.describe()
        found = await ms.retrieve_memory("ann", "hello")
        assert found and all("lexical-only" in r.rankers for r in found)


async def test_the_asking_users_memories_are_embedded_before_the_backlog(tmp_path: Path) -> None:
    encoder = SlowTextsEncoder()
    sections: dict[str, dict[str, Any]] = {"retrieval": {"embed_batch": 16, "pending_wait_ms": 60_000}}
    async with asyncio.timeout(DEADLINE), system(tmp_path / "data", encoder, **sections) as ms:
        assert await ms.wait_ready()
        await ms.save_memory("zed", "slow first note")
        await encoder.blocked.wait()  # the embedder is busy with zed's note
        for i in range(100):
            await ms.save_memory(f"other{i % 10}", f"backlog note number {i}")
        mine = await ms.save_memory("ann", "my sister lives in Lyon")
        assert (await ms.stats())["pending_embeddings"] == 102
        # Answered while zed's batch is still in the model: ann's memory rides in the query's
        # own model call, ahead of the 100 queued before it and of the batch in flight.
        found = await ms.retrieve_memory("ann", "where does my sister live?")
        assert not encoder.release.is_set()
        assert found[0].memory.id == mine.id
        assert "dense" in found[0].rankers and "not-embedded" not in found[0].rankers
        query_call = ["where does my sister live?", "my sister lives in Lyon"]
        assert encoder.batches == [["slow first note"], query_call]
        assert (await ms.stats())["pending_embeddings"] == 101
        encoder.release.set()
    async with system(tmp_path / "data", HashingEncoder()) as again:  # the backlog is durable
        for i in range(10):
            found = await again.retrieve_memory(f"other{i}", "backlog note", k=10)
            assert len(found) == 10 and all("not-embedded" not in r.rankers for r in found)
        assert (await again.stats())["pending_embeddings"] == 0


async def test_pending_memories_past_the_wait_rank_lexically_and_say_so(tmp_path: Path) -> None:
    encoder = SlowTextsEncoder()
    sections: dict[str, dict[str, Any]] = {"retrieval": {"pending_wait_ms": 20}}
    async with asyncio.timeout(DEADLINE), system(tmp_path / "data", encoder, **sections) as ms:
        assert await ms.wait_ready()
        first = await ms.save_memory("ann", "my sister lives in Lyon")
        await ms.retrieve_memory("ann", "sister")  # embedded: ann waits for nothing of hers
        late = await ms.save_memory("ann", "slow news: my sister moved to Paris")
        await encoder.blocked.wait()  # ann's late memory is in the embedder's batch, held there
        found = {r.memory.id: r for r in await ms.retrieve_memory("ann", "where does my sister live?")}
        assert set(found) == {first.id, late.id}
        assert "not-embedded" in found[late.id].rankers and "lexical" in found[late.id].rankers
        assert "dense" in found[first.id].rankers and "not-embedded" not in found[first.id].rankers
        encoder.release.set()
