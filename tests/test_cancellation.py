"""A cancelled change applies completely or not at all, and leaves no lock held."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from memory import MemorySystem

pytestmark = pytest.mark.both_backends  # one behaviour suite, both storage backends


async def _yield(times: int) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


async def _state(ms: MemorySystem, uid: str) -> tuple[int, int, int]:
    ctx = await ms.get_user_context(uid)
    rows = len(await ms.history(uid)) if ctx.version else 0
    return ctx.version, rows, len(await ms.get_memories(uid))


@pytest.mark.parametrize("cancel_after", [0, 1, 2, 3, 5, 8, 13, 21, 34])
async def test_cancelled_update_is_all_or_nothing(
    make_system: Callable[..., MemorySystem], cancel_after: int
) -> None:
    async with make_system() as ms:
        await ms.update_context("alice", "first", "reply")
        task = asyncio.create_task(ms.update_context("alice", "second", "reply"))
        await _yield(cancel_after)
        task.cancel()
        task.cancel()  # a second cancel must not break the guarantee either
        try:
            await task
            finished = True
        except asyncio.CancelledError:
            finished = False
        version, rows, memories = await _state(ms, "alice")
        assert (version, rows, memories) in ((1, 1, 1), (2, 2, 2))
        if finished:
            assert version == 2
        stats = await ms.stats()
        assert stats["user_locks_in_memory"] == 0
        after = await ms.update_context("alice", "third", "reply")
        assert after.version == version + 1
    async with make_system() as again:
        assert await _state(again, "alice") == (version + 1, rows + 1, memories + 1)


async def test_cancel_while_waiting_for_the_user_lock_applies_nothing(ms: MemorySystem) -> None:
    await ms.update_context("alice", "first", "reply")
    blockers = [asyncio.create_task(ms.update_context("alice", f"b{i}", "r")) for i in range(5)]
    victim = asyncio.create_task(ms.update_context("alice", "victim", "r"))
    await asyncio.sleep(0)
    victim.cancel()
    await asyncio.gather(*blockers)
    with pytest.raises(asyncio.CancelledError):
        await victim
    ctx = await ms.get_user_context("alice")
    assert ctx.version == 6
    assert all(e.message != "victim" for e in ctx.recent)
    assert (await ms.stats())["user_locks_in_memory"] == 0


async def test_many_cancelled_updates_under_load_keep_counts_consistent(ms: MemorySystem) -> None:
    tasks = [asyncio.create_task(ms.update_context("alice", f"m{i}", "r")) for i in range(200)]
    for i, task in enumerate(tasks):
        if i % 3 == 0:
            task.cancel()
        if i % 7 == 0:
            await asyncio.sleep(0)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    completed = sum(1 for r in results if not isinstance(r, BaseException))
    ctx = await ms.get_user_context("alice")
    assert ctx.conversations_count >= completed
    assert ctx.conversations_count == ctx.version == len(await ms.history("alice"))
    assert len(await ms.get_memories("alice")) == ctx.conversations_count
    assert (await ms.stats())["user_locks_in_memory"] == 0
