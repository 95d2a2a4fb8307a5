"""SQLite's ``quick_check`` of a data folder, off the start path.

At 100k memories the check took 1-2.5 s, most of the time before the first context could be
read. It now runs after ``start()`` on a read connection (and thread) of its own, so neither the
event loop nor the writer waits for it; a WAL reader sees one consistent snapshot of the file
while commits go on. Until it is done the store answers as usual; when it finds damage the
operator is told at once (an error logged, stats, health) and every later write is refused with
the error a damaged database gives at start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from memory.errors import DataDamagedError
from memory.storage.sqlite_connection import AsyncConnection, sqlite3
from memory.storage.sqlite_errors import _CORRUPTION, damaged_database, database_error, primary_code

log = logging.getLogger(__name__)
QUICK_CHECK = "PRAGMA quick_check"


class CheckState(StrEnum):
    OFF = "off"  # storage.integrity_check_on_start = false
    CHECKING = "checking"  # (or waiting for its hook)
    OK = "ok"
    DAMAGED = "damaged"  # writes are refused
    FAILED = "failed"  # the check itself could not run (an I/O error, say): nothing is refused
    STOPPED = "stopped"  # closed before it finished


def quick_check_problem(rows: Sequence[Any]) -> sqlite3.DatabaseError | None:
    """What ``quick_check``'s rows report, as the error that names it; None for a sound file."""
    found = [str(row[0]) for row in rows]
    if found == ["ok"]:
        return None
    return sqlite3.DatabaseError("quick_check: " + "; ".join(found[:5]))


class IntegrityCheck:
    """One check of one database file, and what it found (``state``, ``problem``)."""

    def __init__(self, path: Path, on_damage: Callable[[DataDamagedError], None]) -> None:
        self.path = path
        self.state = CheckState.OFF
        self.problem: str | None = None
        self.seconds: float | None = None
        self._on_damage = on_damage
        self._task: asyncio.Task[None] | None = None
        # Held while the check's read transaction is open, which keeps the WAL from being
        # emptied: an erasure's WAL truncation takes it too, so it waits for a check that is
        # reading, never for one that has not begun (that one waits for the model, up to 60 s).
        self.reading = asyncio.Lock()

    def passed(self) -> None:
        """The check ran on the start path (``blocking``) and found nothing."""
        self.state = CheckState.OK

    def start(
        self,
        snapshot: Path | None,
        hold: asyncio.Event | None = None,
        after: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """Run the check in the background, once ``after()`` is done (what should not share the
        CPU with it); ``hold`` (a test hook) keeps it from starting until set.

        ``snapshot``, when it exists, is named in the damage error, as at start.
        """
        self.state = CheckState.CHECKING
        run = self._run(snapshot, hold, after)
        self._task = asyncio.create_task(run, name="memory-bot integrity check")

    async def wait(self) -> CheckState:
        """Until the check is done (at once when none runs); its state."""
        if self._task is not None:
            await asyncio.shield(self._task)
        return self.state

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if self.state is CheckState.CHECKING:
                self.state = CheckState.STOPPED

    def stats(self) -> dict[str, Any]:
        return {
            "integrity_check": str(self.state),
            "integrity_problem": self.problem,
            "integrity_check_seconds": round(self.seconds, 3) if self.seconds is not None else None,
        }

    async def _run(
        self, snapshot: Path | None, hold: asyncio.Event | None, after: Callable[[], Awaitable[object]] | None
    ) -> None:
        if after is not None:
            await after()
        if hold is not None:
            await hold.wait()
        started = time.perf_counter()
        try:
            async with self.reading:
                rows = await self._quick_check()
        except sqlite3.DatabaseError as exc:
            if primary_code(exc) in _CORRUPTION:
                self._damaged(exc, snapshot)
            else:
                self._failed(str(database_error(self.path, exc)))
            return
        except (sqlite3.Error, OSError) as exc:
            self._failed(f"could not check {self.path}: {exc}")
            return
        finally:
            self.seconds = time.perf_counter() - started
        problem = quick_check_problem(rows)
        if problem is not None:
            self._damaged(problem, snapshot)
            return
        self.state = CheckState.OK
        log.info("integrity check of %s: ok in %.1f s", self.path, self.seconds)

    async def _quick_check(self) -> list[sqlite3.Row]:
        conn = await AsyncConnection.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            return list(await conn.execute_fetchall(QUICK_CHECK))
        finally:
            await conn.close()

    def _damaged(self, cause: sqlite3.Error, snapshot: Path | None) -> None:
        error = damaged_database(self.path, cause, snapshot if snapshot and snapshot.exists() else None)
        self.state = CheckState.DAMAGED
        self.problem = str(error)
        log.error("the integrity check found damage; writes are refused from now on: %s", error)
        self._on_damage(error)

    def _failed(self, why: str) -> None:
        self.state = CheckState.FAILED
        self.problem = why
        log.error("the integrity check could not run (writes go on): %s", why)
