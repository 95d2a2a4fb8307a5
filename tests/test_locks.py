from __future__ import annotations

import asyncio

import pytest

from memory import LockOrderError
from memory.locks import LockLevel, OrderedLock, UserLocks, held_levels


async def test_taking_db_then_user_raises_lock_order_error() -> None:
    users, db = UserLocks(), OrderedLock(LockLevel.DB)
    async with db:
        with pytest.raises(LockOrderError, match="user"):
            async with users.hold("alice"):
                pytest.fail("the user lock must not be granted under the db lock")
        assert held_levels() == (LockLevel.DB,)
    assert held_levels() == ()
    assert not users.locked("alice")
    assert users.stats()["user_locks_in_memory"] == 0


async def test_taking_the_same_level_twice_raises() -> None:
    users = UserLocks()
    async with users.hold("alice"):
        with pytest.raises(LockOrderError):
            async with users.hold("bob"):
                pytest.fail("two user locks at once are against the order")


async def test_locks_in_order_are_granted() -> None:
    users = UserLocks()
    levels = [
        OrderedLock(level) for level in (LockLevel.INDEX, LockLevel.DB, LockLevel.SAVE, LockLevel.ENCODER)
    ]
    async with users.hold("alice"), levels[0], levels[1], levels[2], levels[3]:
        assert held_levels() == tuple(LockLevel)
    assert held_levels() == ()


async def test_order_is_tracked_per_task() -> None:
    db = OrderedLock(LockLevel.DB)
    users = UserLocks()
    inside = asyncio.Event()
    release = asyncio.Event()

    async def hold_db() -> None:
        async with db:
            inside.set()
            await release.wait()

    task = asyncio.create_task(hold_db())
    await inside.wait()
    async with users.hold("alice"):  # this task holds nothing: allowed
        assert held_levels() == (LockLevel.USER,)
    release.set()
    await task


async def test_user_lock_serialises_one_user_and_is_dropped_when_idle() -> None:
    users = UserLocks()
    active = 0
    peak = 0
    gate = asyncio.Event()

    async def worker() -> None:
        nonlocal active, peak
        async with users.hold("alice"):
            active += 1
            peak = max(peak, active)
            await gate.wait()
            active -= 1

    tasks = [asyncio.create_task(worker()) for _ in range(50)]
    await asyncio.sleep(0)  # let every task reach the lock
    assert users.stats()["user_lock_waiters"] == 49
    gate.set()
    await asyncio.gather(*tasks)
    assert peak == 1
    assert users.stats() == {
        "user_locks_in_memory": 0,
        "user_locks_held": 0,
        "user_lock_waiters": 0,
    }


async def test_cancelled_waiter_leaves_no_trace() -> None:
    users = UserLocks()
    holding = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with users.hold("alice"):
            holding.set()
            await release.wait()

    async def waiter() -> None:
        async with users.hold("alice"):
            pytest.fail("the cancelled waiter must never get the lock")

    first = asyncio.create_task(holder())
    await holding.wait()
    second = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    release.set()
    await first
    assert users.stats()["user_locks_in_memory"] == 0
