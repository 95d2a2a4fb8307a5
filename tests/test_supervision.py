"""A background task that dies fails its waiters and every later call at once, never a hang.

Faults are injected through the public ``faults`` test hook of ``MemorySystem``; everything
else is real (SQLite files, FAISS, the model for the batcher test).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from memory import (
    BackgroundTaskError,
    Faults,
    HashingEncoder,
    MemorySystem,
    SystemState,
    TaskName,
    UserContext,
    load_settings,
)
from memory.supervisor import Supervisor
from tests.conftest import test_settings

DEADLINE = 1.0  # "fails at once": well under this, on a loaded 2-core machine


pytestmark = pytest.mark.both_backends  # one behaviour suite, both storage backends


def system(data_dir: Path, faults: Faults | None = None) -> MemorySystem:
    return MemorySystem(data_dir, settings=test_settings(), encoder=HashingEncoder(), faults=faults)


def state(ms: MemorySystem) -> SystemState:
    """The state, read afresh (a function, so a type checker does not carry an earlier read over)."""
    return ms.state


def assert_no_new_threads(before: set[threading.Thread]) -> None:
    """Every thread started since ``before`` has ended (joined, so no race with its last step).

    Two are not the MemorySystem's: the event loop's default executor (``asyncio_*``, used by
    aiofiles), which ends with the loop, and tqdm's process-wide ``tqdm_monitor`` daemon, which
    the first import of sentence-transformers starts.
    """
    foreign = ("asyncio_", "tqdm_monitor")
    left = [t for t in threading.enumerate() if t not in before and not t.name.startswith(foreign)]
    for thread in left:
        thread.join(timeout=5)
    assert [t.name for t in left if t.is_alive()] == []


async def test_dead_commit_writer_fails_waiting_and_later_calls_at_once(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    faults = Faults()
    ms = system(tmp_path / "data", faults)
    await ms.start()
    await ms.update_context("kept", "before the fault", "ok")
    faults.arm(TaskName.COMMIT_WRITER, RuntimeError("injected writer bug"))
    async with asyncio.timeout(DEADLINE):
        # Five callers queued in the batch the writer dies on, each holding its user lock.
        outcomes = await asyncio.gather(
            *(ms.update_context(f"user{i}", "hello", "hi") for i in range(5)), return_exceptions=True
        )
        assert [type(o) for o in outcomes] == [BackgroundTaskError] * 5
        error = outcomes[0]
        assert isinstance(error, BackgroundTaskError) and error.task == "commit writer"
        assert "RuntimeError: injected writer bug" in str(error)
        assert state(ms) is SystemState.FAILED
        with pytest.raises(BackgroundTaskError, match="commit writer"):  # later calls: at once
            await ms.update_context("user0", "again", "hi")
        with pytest.raises(BackgroundTaskError, match="commit writer"):
            await ms.get_user_context("kept")
    stats = await ms.stats()
    assert stats["state"] == "failed"
    assert stats["user_locks_held"] == 0  # the failed callers released their locks
    assert stats["tasks"]["commit writer"].startswith("died at ")
    assert stats["tasks"]["commit writer"].endswith("RuntimeError: injected writer bug")
    embedder_states = ("running", "stopped: the commit writer it relies on died")
    assert stats["tasks"]["embedder"] in embedder_states
    # The embedder may stop between the two reads (it notices the dead writer on its own time).
    health_tasks = dict(ms.health()["tasks"])
    assert health_tasks.pop("embedder") in embedder_states
    assert health_tasks == {k: v for k, v in stats["tasks"].items() if k != "embedder"}
    async with asyncio.timeout(10):
        with pytest.raises(BackgroundTaskError, match="commit writer"):
            await ms.close()  # releases everything, then reports the death
    assert state(ms) is SystemState.CLOSED
    assert_no_new_threads(before)
    async with system(tmp_path / "data") as again:  # the folder lock was released
        assert (await again.get_user_context("kept")).conversations_count == 1
        assert await again.list_users() == ["kept"]  # nothing failed was half-applied


async def test_dead_embedder_shows_in_stats_and_retrieve_fails_fast(tmp_path: Path) -> None:
    faults = Faults()
    ms = system(tmp_path / "data", faults)
    await ms.start()
    faults.arm(TaskName.EMBEDDER, KeyError("injected embedder bug"))
    memory = await ms.save_memory("ann", "my cat is called Miso")  # committed before the death
    async with asyncio.timeout(DEADLINE):
        # A retrieve embeds its user's memories itself; it is the one after the death that fails.
        while state(ms) is not SystemState.FAILED:
            await asyncio.sleep(0)
        with pytest.raises(BackgroundTaskError, match="embedder") as info:
            await ms.retrieve_memory("ann", "what is my cat called?")
    assert info.value.task == "embedder"
    stats = await ms.stats()
    assert stats["state"] == "failed"
    assert stats["tasks"]["embedder"].endswith("KeyError: 'injected embedder bug'")
    assert stats["tasks"]["commit writer"] == "running"
    with pytest.raises(BackgroundTaskError, match="embedder"):
        await ms.save_memory("ann", "another")
    async with asyncio.timeout(10):
        with pytest.raises(BackgroundTaskError):
            await ms.close()
    async with system(tmp_path / "data") as again:  # the memory was durable; it is embedded now
        found = await again.retrieve_memory("ann", "what is my cat called?")
        assert [m.memory.id for m in found] == [memory.id]
        assert "dense" in found[0].rankers


@pytest.mark.slow
async def test_batcher_that_raises_key_error_fails_encode_at_once(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    faults = Faults()
    settings = load_settings(environ={})  # the real model and its micro-batcher
    ms = MemorySystem(tmp_path / "data", settings=settings, faults=faults)
    await ms.start()
    assert await ms.wait_ready()  # the model loads in the background
    faults.arm(TaskName.ENCODER_BATCHER, KeyError("input_ids"))
    async with asyncio.timeout(DEADLINE):
        # Queries take the encoder's urgent lane; the background embedding meets the fault.
        await ms.save_memory("ann", "a memory for the background embedder")
        while state(ms) is not SystemState.FAILED:
            await asyncio.sleep(0)
        queries = [ms.retrieve_memory("bob", f"question {i}") for i in range(3)]
        outcomes = await asyncio.gather(*queries, return_exceptions=True)
        assert [type(o) for o in outcomes] == [BackgroundTaskError] * 3
        assert "encoder batcher" in str(outcomes[0]) and "KeyError: 'input_ids'" in str(outcomes[0])
        with pytest.raises(BackgroundTaskError, match="encoder batcher"):
            await ms.retrieve_memory("bob", "and later")
    health = ms.health()
    assert health["state"] == "failed"
    assert health["tasks"]["encoder batcher"].endswith("KeyError: 'input_ids'")
    async with asyncio.timeout(30):
        with pytest.raises(BackgroundTaskError, match="encoder batcher"):
            await ms.close()
    assert_no_new_threads(before)


async def test_unarmed_faults_change_nothing(tmp_path: Path) -> None:
    async with system(tmp_path / "data", Faults()) as ms:
        ctx = await ms.update_context("ann", "hello", "hi")
        assert isinstance(ctx, UserContext) and ctx.conversations_count == 1
        assert await ms.wait_ready()  # the embedder starts once the model and index are ready
        health = ms.health()
        assert health["state"] == "running"
        # No change feed: only a shared store (PostgreSQL) listens for other processes.
        assert set(health["tasks"]) == {str(name) for name in TaskName} - {"encoder batcher", "change feed"}
        assert health["tasks"].pop("model loader") == "ok"  # done: the model is ready
        assert set(health["tasks"].values()) == {"running"}


async def test_supervisor_records_a_death_once_and_a_task_stopped_by_it_as_stopped() -> None:
    deaths: list[BackgroundTaskError] = []
    supervisor = Supervisor(on_death=deaths.append)
    failed: list[BackgroundTaskError] = []

    async def auto_saver() -> None:
        raise OSError("disk on fire")

    async def checkpointer() -> None:
        error = supervisor.first_death()
        assert error is not None
        raise error  # what a task gets from a dead task it relies on

    await supervisor.spawn(TaskName.AUTO_SAVER, auto_saver, failed.append)
    await supervisor.spawn(TaskName.CHECKPOINTER, checkpointer, failed.append)
    assert [e.task for e in deaths] == ["auto-saver"]  # the system is told of one death
    assert [e.task for e in failed] == ["auto-saver", "auto-saver"]  # both owners fail waiters
    assert isinstance(deaths[0].__cause__, OSError)
    health = supervisor.health()
    assert health["auto-saver"].endswith("OSError: disk on fire")
    assert health["checkpointer"] == "stopped: the auto-saver it relies on died"
