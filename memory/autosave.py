"""The auto-saver: writes the JSON snapshot after changes, at most once per interval.

Failures are logged with their cause, counted in ``stats()`` and retried with backoff;
the final save on close raises if it cannot be made, so a lost snapshot is never silent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from memory.coalesce import Coalesced
from memory.errors import StorageError
from memory.locks import LockLevel, OrderedLock
from memory.snapshot import write_snapshot
from memory.supervisor import Supervisor, TaskName
from memory.workers import wait_any

log = logging.getLogger(__name__)
MAX_BACKOFF = 60.0


class AutoSaver:
    def __init__(
        self,
        path: Path,
        interval: float,
        source: Callable[[], tuple[list[bytes], int]],
        supervisor: Supervisor | None = None,
    ) -> None:
        self.path = path
        self._supervisor = supervisor or Supervisor()
        self.interval = interval
        self._source = source
        self._dirty = asyncio.Event()
        self._stopping = asyncio.Event()
        self._lock = OrderedLock(LockLevel.SAVE)
        self._task: asyncio.Task[None] | None = None
        self._flush = Coalesced(self.save_now)
        self._last_attempt = float("-inf")  # the first save after start is not delayed
        self.saves = 0
        self.failures = 0
        self.last_save: datetime | None = None
        self.last_save_seconds: float | None = None
        self.last_save_bytes = 0
        self.last_error: str | None = None

    def start(self) -> None:
        # Nothing waits on the saver: its death shows in health, and close() still saves.
        self._task = self._supervisor.spawn(TaskName.AUTO_SAVER, self._run, lambda error: None)

    def mark_dirty(self) -> None:
        self._dirty.set()

    async def flush(self) -> None:
        """Until a snapshot begun after this call is on disk (an erasure must not wait for the
        interval, nor survive in the old file); concurrent callers share one write."""
        await self._flush()

    async def save_now(self) -> None:
        async with self._lock:
            self._dirty.clear()
            self._last_attempt = time.monotonic()
            parts, count = self._source()
            started = time.perf_counter()
            try:
                self.last_save_bytes = await write_snapshot(self.path, parts, count)
            except StorageError as exc:
                self.failures += 1
                self.last_error = f"{datetime.now(UTC).isoformat()}: {exc}"
                self._dirty.set()
                raise
            self.last_save_seconds = time.perf_counter() - started
            self.last_save = datetime.now(UTC)
            self.last_error = None
            self.saves += 1

    async def _run(self) -> None:
        backoff = self.interval
        while not self._stopping.is_set():
            await self._wait(self._dirty, None)
            if self._stopping.is_set():
                return
            # Coalesce: at most one write per interval, however many changes came meanwhile.
            delay = self._last_attempt + self.interval - time.monotonic()
            if delay > 0 and await self._wait(self._stopping, delay):
                return
            self._supervisor.fault_point(TaskName.AUTO_SAVER)
            try:
                await self.save_now()
            except StorageError as exc:
                log.error("auto-save failed, retrying in %.1f s: %s", backoff, exc)
                if await self._wait(self._stopping, backoff):
                    return
                backoff = min(backoff * 2, MAX_BACKOFF)
            else:
                backoff = self.interval

    async def _wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        """Wait for ``event`` or for the saver to stop; True when stopping."""
        await wait_any(event, self._stopping, timeout=timeout)
        return self._stopping.is_set()

    async def close(self) -> None:
        """Stop the loop and make the final save (retried once before raising)."""
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
        try:
            await self.save_now()
        except StorageError as exc:
            log.error("final snapshot save failed, retrying once: %s", exc)
            await self.save_now()

    def stats(self) -> dict[str, Any]:
        return {
            "snapshot_path": str(self.path),
            "save_interval": self.interval,
            "last_save": self.last_save.isoformat() if self.last_save else None,
            "last_save_seconds": self.last_save_seconds,
            "last_save_bytes": self.last_save_bytes,
            "saves": self.saves,
            "save_failures": self.failures,
            "last_save_error": self.last_error,
            "save_pending": self._dirty.is_set(),
        }
