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

from memory.errors import StorageError
from memory.locks import LockLevel, OrderedLock
from memory.storage.batch_writer import BatchWriter, Queued
from memory.storage.sqlite_connection import AsyncConnection, sqlite3
from memory.supervisor import Supervisor

log = logging.getLogger(__name__)

Statement: TypeAlias = tuple[str, Sequence[Any]]
# What binding or running a statement can raise; anything else is a bug and propagates.
DB_ERRORS = (sqlite3.Error, ValueError, TypeError, OverflowError)


_Unit: TypeAlias = Queued[Sequence[Statement], None]


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


class GroupCommitWriter(BatchWriter[Sequence[Statement], None]):
    """SQLite's writer: a unit is a list of statements; units of the same statements run
    together with ``executemany``."""

    def __init__(self, conn: AsyncConnection, path: str, max_batch: int, supervisor: Supervisor) -> None:
        super().__init__(max_batch, supervisor)
        self._conn = conn
        self._path = path
        self.db_lock = OrderedLock(LockLevel.DB)

    def submit(self, statements: Sequence[Statement]) -> asyncio.Future[None]:
        """Queue one unit; the future resolves after its transaction has committed."""
        return self._enqueue(statements)

    async def close(self) -> None:
        """Commit everything queued, then stop."""
        await self._drain()

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
        shapes: dict[tuple[str, ...], list[Sequence[Statement]]] = {}
        for unit in batch:
            shapes.setdefault(tuple(sql for sql, _ in unit.item), []).append(unit.item)
        groups = [
            (sql, [statements[position][1] for statements in units])
            for shape, units in shapes.items()
            for position, sql in enumerate(shape)
        ]
        await self._conn.run(_apply_in_one_transaction, groups)

    def _resolve(self, batch: list[_Unit]) -> None:
        self._committed(batch, [None] * len(batch))

    def _fail(self, unit: _Unit, exc: Exception) -> None:
        log.error("commit failed on %s: %s", self._path, exc)
        if not unit.future.done():
            unit.future.set_exception(StorageError(f"could not commit to {self._path}: {exc}", self._path))
