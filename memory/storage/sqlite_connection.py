"""The SQLite the store runs on, and a connection on a thread of its own.

Which SQLite: sqlean-py bundles SQLite 3.50, whose FTS5 ``secure-delete`` option removes a
deleted row's terms from the index at once. With the SQLite of the standard library here
(3.40), deleted terms stay in FTS5's segments as tombstones until a merge, so every forget has
to merge the whole index before it returns: measured 1.5 s of CPU per forget at 100k memories
(benchmarks/bench_erasure.py) against about 1 ms of delete. The standard library's module is
the fallback; the store checks ``sqlite_version_info`` for what it can rely on.

The connection: every SQLite call is blocking, so each connection lives on one thread and a
whole function runs there in one hop (a group commit's batch is one call, not one per
statement). This replaces aiosqlite, whose module is tied to the standard library's sqlite3
and whose one-hop call is private.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from memory.workers import SingleThreadWorker

if TYPE_CHECKING:
    import sqlite3
else:
    try:
        import sqlean as sqlite3
    except ImportError:  # the standard library's SQLite: forgets purge by merging
        import sqlite3

__all__ = ["AsyncConnection", "sqlite3"]

T = TypeVar("T")


def _open(target: str, uri: bool) -> sqlite3.Connection:
    return sqlite3.connect(target, uri=uri)


def _execute(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> None:
    db.execute(sql, params).close()


def _fetchall(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
    cursor = db.execute(sql, params)
    try:
        return cursor.fetchall()
    finally:
        cursor.close()


def _close(db: sqlite3.Connection) -> None:
    db.close()


class AsyncConnection:
    """One SQLite connection, used only from its own thread."""

    def __init__(self, worker: SingleThreadWorker, db: sqlite3.Connection) -> None:
        self._worker = worker
        self._db = db
        self._closed = False

    @classmethod
    async def connect(cls, target: str, *, uri: bool = False) -> AsyncConnection:
        worker = SingleThreadWorker("memory-bot-sqlite")
        try:
            db = await worker.run(_open, target, uri)
        except BaseException:
            worker.close()  # else its thread outlives us and holds the process open
            raise
        return cls(worker, db)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on the connection's thread, in one hop."""
        return await self._worker.run(fn, self._db, *args)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self.run(_execute, sql, params)

    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return await self.run(_fetchall, sql, params)

    async def close(self) -> None:
        """Close the connection, then its thread; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.run(_close)
        finally:
            self._worker.close()
