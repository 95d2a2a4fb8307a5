"""The lock hierarchy: user -> index -> db -> save -> encoder, checked at run time.

Each task records (in a context variable) which levels it holds; asking for a level at or
below one already held raises ``LockOrderError`` before waiting, so a possible deadlock is a
loud bug instead of a hang. The check is a tuple compare per acquire, cheap enough to stay on.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar, Token
from dataclasses import dataclass
from enum import IntEnum
from types import TracebackType

from memory.errors import LockOrderError


class LockLevel(IntEnum):
    USER = 1
    INDEX = 2
    DB = 3
    SAVE = 4
    ENCODER = 5


_held: ContextVar[tuple[LockLevel, ...]] = ContextVar("memory_bot_locks_held", default=())


def held_levels() -> tuple[LockLevel, ...]:
    """The levels the current task holds, lowest first."""
    return _held.get()


def _enter(level: LockLevel) -> tuple[LockLevel, ...]:
    held = _held.get()
    if held and held[-1] >= level:
        raise LockOrderError(
            f"cannot take the {level.name.lower()} lock while holding "
            f"{', '.join(h.name.lower() for h in held)}: locks must be taken in the order "
            "user -> index -> db -> save -> encoder"
        )
    return held


class OrderedLock:
    """One asyncio lock at a fixed level of the hierarchy."""

    __slots__ = ("_lock", "_tokens", "level")

    def __init__(self, level: LockLevel) -> None:
        self.level = level
        self._lock = asyncio.Lock()
        self._tokens: list[Token[tuple[LockLevel, ...]]] = []

    def locked(self) -> bool:
        return self._lock.locked()

    async def __aenter__(self) -> None:
        held = _enter(self.level)
        await self._lock.acquire()
        self._tokens.append(_held.set((*held, self.level)))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _held.reset(self._tokens.pop())
        self._lock.release()


@dataclass(slots=True)
class _UserEntry:
    lock: asyncio.Lock
    users: int = 0


class UserLocks:
    """One lock per user id, made on first use and dropped when no task holds or awaits it."""

    __slots__ = ("_entries", "_idle")

    def __init__(self) -> None:
        self._entries: dict[str, _UserEntry] = {}
        self._idle = asyncio.Event()  # set while no task holds or awaits any user lock
        self._idle.set()

    async def wait_idle(self) -> None:
        """Until every change in flight has left its user lock (close() lets them finish)."""
        await self._idle.wait()

    def hold(self, user_id: str) -> HeldUserLock:
        return HeldUserLock(self, user_id)

    def locked(self, user_id: str) -> bool:
        entry = self._entries.get(user_id)
        return entry is not None and entry.lock.locked()

    def stats(self) -> dict[str, int]:
        return {
            "user_locks_in_memory": len(self._entries),
            "user_locks_held": sum(1 for e in self._entries.values() if e.lock.locked()),
            "user_lock_waiters": sum(max(e.users - 1, 0) for e in self._entries.values()),
        }

    def _entry(self, user_id: str) -> _UserEntry:
        entry = self._entries.get(user_id)
        if entry is None:
            entry = self._entries[user_id] = _UserEntry(asyncio.Lock())
            self._idle.clear()
        entry.users += 1
        return entry

    def _leave(self, user_id: str, entry: _UserEntry) -> None:
        entry.users -= 1
        if entry.users == 0:
            del self._entries[user_id]
            if not self._entries:
                self._idle.set()


class HeldUserLock:
    """``async with locks.hold(user_id):`` serialises every change to one user."""

    __slots__ = ("_entry", "_locks", "_token", "_user_id")

    def __init__(self, locks: UserLocks, user_id: str) -> None:
        self._locks = locks
        self._user_id = user_id

    async def __aenter__(self) -> None:
        held = _enter(LockLevel.USER)
        entry = self._locks._entry(self._user_id)
        try:
            await entry.lock.acquire()
        except BaseException:
            # Cancelled while waiting: nothing acquired, so forget our claim on the entry.
            self._locks._leave(self._user_id, entry)
            raise
        self._entry = entry
        self._token = _held.set((*held, LockLevel.USER))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _held.reset(self._token)
        self._entry.lock.release()
        self._locks._leave(self._user_id, self._entry)
