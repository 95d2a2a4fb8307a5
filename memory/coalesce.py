"""One run of an action for many callers: each returns after a run that began after it asked.

Erasures need the snapshot rewritten and the FTS5 segments merged before they return, and
both cost the same for one forget as for fifty: callers arriving while a run is going share the
next one instead of queueing a run each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class Coalesced:
    def __init__(self, action: Callable[[], Awaitable[None]]) -> None:
        self._action = action
        # A gate, not a data lock: held only around the action, which takes its own locks.
        self._gate = asyncio.Lock()
        self._asked = 0
        self._covered = 0

    async def __call__(self) -> None:
        self._asked += 1
        ticket = self._asked
        async with self._gate:
            if self._covered >= ticket:
                return  # a run that began after this caller asked has finished
            covers = self._asked
            await self._action()
            self._covered = covers
