"""Group commit: one writer task commits the writes of many concurrent callers at once.

A caller submits a unit (a list of SQL statements) and awaits its future; the writer drains
whatever is queued, runs it in one transaction and resolves every future after COMMIT. Units
with the same sequence of statements are run together with ``executemany``, which keeps the
round trips to SQLite's thread per batch, not per caller. Reordering units is safe because a
unit only touches its own user's rows and a user's next unit waits for this one's commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, TypeAlias

from memory.errors import BackgroundTaskError, StorageError, SystemClosedError
from memory.locks import LockLevel, OrderedLock
from memory.storage.sqlite_connection import AsyncConnection, sqlite3
from memory.supervisor import Supervisor, TaskName

log = logging.getLogger(__name__)

Statement: TypeAlias = tuple[str, Sequence[Any]]
# What binding or running a statement can raise; anything else is a bug and propagates.
YIELDS_BEFORE_DRAIN = 3
DB_ERRORS = (sqlite3.Error, ValueError, TypeError, OverflowError)


def _apply_in_one_transaction(db: sqlite3.Connection, groups: list[tuple[str, list[Sequence[Any]]]]) -> None:
    try:
        for sql, rows in groups:
            if len(rows) == 1:
                db.execute(sql, rows[0])
            else:
                db.executemany(sql, rows)
        db.commit()
    except BaseException:
        db.rollback()
        raise


class _Unit:
    __slots__ = ("future", "shape", "statements")

    def __init__(self, statements: Sequence[Statement], future: asyncio.Future[None]) -> None:
        self.statements = statements
        self.shape = tuple(sql for sql, _ in statements)
        self.future = future


class GroupCommitWriter:
    def __init__(self, conn: AsyncConnection, path: str, max_batch: int, supervisor: Supervisor) -> None:
        self._conn = conn
        self._supervisor = supervisor
        self._path = path
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Unit | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._batch: list[_Unit] = []  # taken from the queue, not yet resolved
        self._dead: BackgroundTaskError | None = None
        self.db_lock = OrderedLock(LockLevel.DB)
        self.batches = 0
        self.units = 0
        self.largest_batch = 0

    def start(self) -> None:
        self._task = self._supervisor.spawn(TaskName.COMMIT_WRITER, self._run, self._died)

    def submit(self, statements: Sequence[Statement]) -> asyncio.Future[None]:
        """Queue one unit; the future resolves after its transaction has committed."""
        if self._dead is not None:
            raise self._dead.with_traceback(None)
        if self._closed:
            raise SystemClosedError("the store is closed; start a new MemorySystem to write")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Unit(statements, future))
        return future

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def close(self) -> None:
        """Commit everything queued, then stop."""
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(None)
        if self._task is not None:
            await self._task  # returns even when the writer died (the supervisor kept the error)

    def _died(self, error: BackgroundTaskError) -> None:
        """Fail the batch in hand and everything queued at once: no caller waits on a dead writer."""
        self._dead = error
        waiting = [*self._batch]
        while not self._queue.empty():
            unit = self._queue.get_nowait()
            if unit is not None:
                waiting.append(unit)
        self._batch = []
        for unit in waiting:
            if not unit.future.done():
                unit.future.set_exception(error)

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            # Let callers woken by the last commit submit their next write first: without
            # this, batches alternate large and tiny, and the tiny ones pay a whole fsync.
            for _ in range(YIELDS_BEFORE_DRAIN):
                await asyncio.sleep(0)
            batch: list[_Unit] = []
            if first is None:
                stopping = True
            else:
                batch.append(first)
            while len(batch) < self._max_batch and not self._queue.empty():
                unit = self._queue.get_nowait()
                if unit is None:
                    stopping = True
                    continue
                batch.append(unit)
            if batch:
                self._batch = batch
                self._supervisor.fault_point(TaskName.COMMIT_WRITER)
                await self._commit_batch(batch)
                self._batch = []

    async def _commit_batch(self, batch: list[_Unit]) -> None:
        async with self.db_lock:
            try:
                await self._execute(batch)
            except DB_ERRORS as exc:
                if len(batch) == 1:
                    self._fail(batch[0], exc)
                    return
                # One bad unit must not sink the others: retry them one by one.
                for unit in batch:
                    try:
                        await self._execute([unit])
                    except DB_ERRORS as unit_exc:
                        self._fail(unit, unit_exc)
                    else:
                        self._resolve([unit])
                return
        self._resolve(batch)

    async def _execute(self, batch: list[_Unit]) -> None:
        shapes: dict[tuple[str, ...], list[_Unit]] = {}
        for unit in batch:
            shapes.setdefault(unit.shape, []).append(unit)
        groups = [
            (sql, [u.statements[position][1] for u in units])
            for shape, units in shapes.items()
            for position, sql in enumerate(shape)
        ]
        await self._conn.run(_apply_in_one_transaction, groups)

    def _resolve(self, batch: list[_Unit]) -> None:
        self.batches += 1
        self.units += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        for unit in batch:
            if not unit.future.done():
                unit.future.set_result(None)

    def _fail(self, unit: _Unit, exc: Exception) -> None:
        log.error("commit failed on %s: %s", self._path, exc)
        if not unit.future.done():
            unit.future.set_exception(StorageError(f"could not commit to {self._path}: {exc}", self._path))
