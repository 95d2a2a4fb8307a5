"""One thread per blocking resource (the model, FAISS), reached through one typed helper."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from memory.errors import SystemClosedError

T = TypeVar("T")


async def wait_any(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Until one of ``events`` is set or ``timeout`` passes; leaves no waiter behind."""
    waits = {asyncio.ensure_future(event.wait()) for event in events}
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()


class SingleThreadWorker:
    """Calls run in order on one thread, so the resource behind it needs no lock of its own."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        # Checked here, not left to the executor: its "cannot schedule new futures" is a raw
        # RuntimeError, and a call in flight during close() must get the library's own error.
        if self._closed:
            raise SystemClosedError(f"the {self._name} thread is closed; start a new MemorySystem")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """Finish the work handed over, then stop the thread; safe to call twice."""
        self._closed = True
        self._executor.shutdown(wait=True)
