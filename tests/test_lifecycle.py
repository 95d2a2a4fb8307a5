"""The lifecycle: new -> starting -> running -> closing -> closed; close() always releases everything.

A failing final save (a full disk) is made real by putting a directory where the file goes:
the rename onto it fails exactly as a write to a full disk does, with an OSError.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from memory import (
    HashingEncoder,
    MemorySystem,
    ScoredMemory,
    StorageError,
    SystemClosedError,
    SystemState,
    UserContext,
)
from memory.recovery import INDEX_NAME, SNAPSHOT_NAME
from tests.conftest import test_settings
from tests.test_supervision import assert_no_new_threads, state

CLOSE_DEADLINE = 15.0


pytestmark = pytest.mark.both_backends  # one behaviour suite, both storage backends


def system(data_dir: Path) -> MemorySystem:
    # No auto-save during the test (only the final one in close), so nothing races the setup.
    settings = test_settings(storage={"save_interval": 3600})
    return MemorySystem(data_dir, settings=settings, encoder=HashingEncoder())


async def started_with_a_snapshot(data_dir: Path) -> MemorySystem:
    """A system whose snapshot is already current: its auto-saver has nothing to write."""
    async with system(data_dir) as first:
        await first.update_context("ann", "hello", "hi")
    ms = system(data_dir)
    await ms.start()
    return ms


def block(path: Path) -> None:
    """Make every save of ``path`` fail: a directory now stands where the file goes."""
    path.unlink(missing_ok=True)
    path.mkdir()


async def test_states_move_forward_and_calls_after_close_raise_one_clear_error(tmp_path: Path) -> None:
    ms = system(tmp_path / "data")
    assert state(ms) is SystemState.NEW
    with pytest.raises(SystemClosedError, match="is new; call await start"):
        await ms.get_user_context("ann")
    await ms.start()
    assert state(ms) is SystemState.RUNNING
    await ms.close()
    assert state(ms) is SystemState.CLOSED
    await ms.close()  # twice is fine
    assert ms.health()["state"] == "closed"
    assert set(ms.health()["tasks"].values()) == {"stopped"}
    with pytest.raises(SystemClosedError, match="is closed; make a new MemorySystem"):
        await ms.update_context("ann", "hello", "hi")
    with pytest.raises(SystemClosedError, match="is closed; make a new one"):
        await ms.start()


async def test_close_after_a_failing_index_and_snapshot_save_releases_everything_then_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    before = set(threading.enumerate())
    ms = await started_with_a_snapshot(data)
    memory = await ms.save_memory("ann", "my cat is called Miso")
    found = await ms.retrieve_memory("ann", "cat")
    assert "dense" in next(s for s in found if s.memory.id == memory.id).rankers  # in the index
    block(data / INDEX_NAME)
    block(data / SNAPSHOT_NAME)
    async with asyncio.timeout(CLOSE_DEADLINE):
        with pytest.raises(StorageError, match="could not save the index") as info:
            await ms.close()
    assert info.value.path == data / INDEX_NAME
    assert state(ms) is SystemState.CLOSED
    snapshot_errors = [r for r in caplog.records if "closing the final snapshot also failed" in r.message]
    assert len(snapshot_errors) == 1 and str(data / SNAPSHOT_NAME) in snapshot_errors[0].message
    assert_no_new_threads(before)  # the SQLite, FAISS threads all ended
    shutil.rmtree(data / INDEX_NAME)
    shutil.rmtree(data / SNAPSHOT_NAME)
    async with system(data) as again:  # the folder lock was released; the memory is durable
        assert [m.id for m in await again.get_memories("ann")][-1] == memory.id
        assert (await again.get_user_context("ann")).conversations_count == 1


async def test_close_after_a_failing_snapshot_save_still_closes_the_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    before = set(threading.enumerate())
    ms = await started_with_a_snapshot(data)
    await ms.update_context("ann", "again", "hi")
    block(data / SNAPSHOT_NAME)
    async with asyncio.timeout(CLOSE_DEADLINE):
        with pytest.raises(StorageError, match="could not write the snapshot") as info:
            await ms.close()
    assert info.value.path == data / SNAPSHOT_NAME
    assert_no_new_threads(before)
    shutil.rmtree(data / SNAPSHOT_NAME)
    async with system(data) as again:
        assert (await again.get_user_context("ann")).conversations_count == 2


async def test_calls_in_flight_during_close_finish_or_get_system_closed_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    before = set(threading.enumerate())
    async with system(data) as first:
        doomed = [await first.save_memory(f"user{i}", f"note {i}") for i in range(4)]
    ms = system(data)
    await ms.start()
    calls: list[asyncio.Task[Any]] = []
    for i in range(8):
        calls.append(asyncio.create_task(ms.update_context(f"user{i}", "hello", "hi")))
        calls.append(asyncio.create_task(ms.update_context("shared", f"message {i}", "hi")))
    calls += [asyncio.create_task(ms.forget_memory(m.user_id, m.id)) for m in doomed]
    calls += [asyncio.create_task(ms.retrieve_memory(f"user{i}", "note")) for i in range(4)]
    await asyncio.sleep(0)  # one step each: every call is now past its start and in flight
    assert not any(call.done() for call in calls)
    closing = asyncio.create_task(ms.close())
    await asyncio.sleep(0)
    assert state(ms) is SystemState.CLOSING
    with pytest.raises(SystemClosedError, match="is closing"):  # a call that starts now is refused
        await ms.update_context("late", "hello", "hi")
    async with asyncio.timeout(CLOSE_DEADLINE):
        await closing
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert [f for f in failures if not isinstance(f, SystemClosedError)] == []
    changes = outcomes[:16] + outcomes[16:20]
    assert all(not isinstance(o, BaseException) for o in changes)  # changes in flight finished
    assert all(isinstance(o, list | SystemClosedError) for o in outcomes[20:])
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert_no_new_threads(before)
    async with system(data) as again:  # what returned is durable, and nothing else was lost
        assert (await again.get_user_context("shared")).conversations_count == 8
        for i in range(8):
            ctx = await again.get_user_context(f"user{i}")
            assert isinstance(ctx, UserContext) and ctx.conversations_count == 1
        remaining = {m.id for i in range(4) for m in await again.get_memories(f"user{i}")}
        assert remaining.isdisjoint(m.id for m in doomed)
        found = await again.retrieve_memory("user0", "note")
        assert all(isinstance(s, ScoredMemory) and s.memory.id != doomed[0].id for s in found)
