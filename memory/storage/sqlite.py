"""SQLite, the embedded backend: one process owns the files (a folder lock, see ownership.py).

Writes arrive as units of the storage protocol, become statement lists (sqlite_units.py) and
are committed by the group-commit writer; reads use a second connection, which in WAL mode never
blocks on it. A unit never conflicts here: the owner's user locks already order every change.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiofiles.os
import orjson

from memory.coalesce import Coalesced
from memory.context import parse_time
from memory.errors import DataDamagedError, StorageError, SystemClosedError
from memory.lexical import MAX_QUERY_TERMS, informative_terms, read_varint, user_bm25
from memory.records import ErasureRecord, HistoryEntry, Memory
from memory.storage.group_commit import GroupCommitWriter, Statement
from memory.storage.protocol import COMMITTED, ChangeListener, Outcome, Unit
from memory.storage.rows import history_entry, memory_from_row
from memory.storage.sqlite_check import IntegrityCheck, quick_check_problem
from memory.storage.sqlite_connection import AsyncConnection, sqlite3
from memory.storage.sqlite_errors import (
    _NO_ACCESS,
    _wal_readable_as_is,
    access_problem,
    damaged_database,
    database_error,
    primary_code,
)
from memory.storage.sqlite_schema import FTS_SECURE_DELETE, migrate
from memory.storage.sqlite_units import model_change_statements, unit_statements
from memory.supervisor import Supervisor, TaskName

log = logging.getLogger(__name__)

CHECKPOINT_INTERVAL = 1.0
# PASSIVE checkpoints never rewind a WAL that is always being written (it reached 690 MiB beside a
# 105 MiB database under a 12-task writer): past this size the checkpointer runs a TRUNCATE one
# between two commits, and journal_size_limit trims the file whenever SQLite rewinds it.
WAL_LIMIT_BYTES = 8 * 1024 * 1024
TRUNCATE_BUSY_MS = 100
FTS_MERGE_STEP = "INSERT INTO memories_fts (memories_fts, rank) VALUES ('merge', 64)"
FTS_OPTIMIZE = "INSERT INTO memories_fts (memories_fts) VALUES ('optimize')"
CACHE_KIB = 65_536
TRUNCATE_ATTEMPTS = 50
TRUNCATE_RETRY_SECONDS = 0.05


class SqliteStore:
    """The SQLite files of one data folder, opened for writing or read-only."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5000,
        max_batch: int = 256,
        readonly: bool = False,
        wal_limit_bytes: int = WAL_LIMIT_BYTES,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.path = path
        self._supervisor = supervisor or Supervisor()
        self.wal_path = path.with_name(path.name + "-wal")
        self.wal_limit_bytes = wal_limit_bytes
        self.wal_truncations = 0
        self.wal_truncations_busy = 0
        self.immutable = False  # read-only and opened with immutable=1: see _open_readonly
        self._checkpoint_interval = checkpoint_interval
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._max_batch = max_batch
        self._readonly = readonly
        self._write_conn: AsyncConnection | None = None
        self._read_conn: AsyncConnection | None = None
        self._writer: GroupCommitWriter | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._purge = Coalesced(self._purge_now)
        self._next_id: int | None = None
        # Set when the background check finds damage: every later write raises it.
        self._damage: DataDamagedError | None = None
        self.integrity = IntegrityCheck(path, self._refuse_writes)

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self, *, integrity_check: bool = True) -> list[int]:
        """Open (creating and migrating when writable); returns the migrations applied."""
        applied: list[int] = []
        try:
            if self._readonly:
                self._read_conn = await self._open_readonly()
                if integrity_check:
                    await self._check_integrity(self._read_conn)
                return applied
            self._write_conn = await self._connect(str(self.path))
            await self._write_conn.execute("PRAGMA journal_mode = WAL")
            # Checkpoints run in the background (_checkpoint_loop), never inside a commit.
            await self._write_conn.execute("PRAGMA wal_autocheckpoint = 0")
            await self._write_conn.execute(f"PRAGMA journal_size_limit = {self.wal_limit_bytes}")
            await self._write_conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            # Freed pages are zeroed: a forgotten text does not linger in free space.
            await self._write_conn.execute("PRAGMA secure_delete = ON")
            if integrity_check:
                await self._check_integrity(self._write_conn)
            applied = await self._write_conn.run(migrate, self.path)
            self._read_conn = await self._connect(str(self.path))
            self._next_id = await self.next_memory_id()
        except sqlite3.DatabaseError as exc:
            await self.close()
            raise database_error(self.path, exc) from exc
        except StorageError:
            await self.close()
            raise
        self._writer = GroupCommitWriter(self._write_conn, str(self.path), self._max_batch, self._supervisor)
        self._writer.start()
        # Nothing waits on the checkpointer: its death only shows in health and fails the system.
        self._checkpointer = self._supervisor.spawn(
            TaskName.CHECKPOINTER, self._checkpoint_loop, lambda error: None
        )
        return applied

    async def _open_readonly(self) -> AsyncConnection:
        """A ``mode=ro`` connection; in a folder this process cannot write, where SQLite cannot
        create the -shm file that WAL reads need, ``immutable=1`` when the WAL holds nothing."""
        uri = self.path.absolute().as_uri()
        try:
            conn = await self._connect(f"{uri}?mode=ro")
        except sqlite3.OperationalError as exc:
            if (
                primary_code(exc) not in _NO_ACCESS
                or access_problem(self.path) is None
                or not _wal_readable_as_is(self.path)
            ):
                raise
            # No writer can be running: it could not have created its -wal and -shm here.
            log.info("%s: the folder is read-only; reading the database as an immutable file", self.path)
            conn = await self._connect(f"{uri}?immutable=1")
            self.immutable = True
        return conn

    async def _checkpoint_loop(self) -> None:
        """After writes: a bounded FTS5 merge step, and the WAL copied into the database, in the
        background so that commits never wait for either."""
        done = 0
        while self._writer is not None and self._read_conn is not None:
            await asyncio.sleep(self._checkpoint_interval)
            writer, conn = self._writer, self._read_conn
            if writer is None or conn is None or writer.units == done or self._damage is not None:
                continue
            self._supervisor.fault_point(TaskName.CHECKPOINTER)
            try:
                await writer.submit([(FTS_MERGE_STEP, ())])
                await conn.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
                if await self.wal_bytes() > self.wal_limit_bytes:
                    await self._truncate_wal(writer)
            except (sqlite3.Error, StorageError) as exc:
                log.warning("background upkeep of %s failed (retried later): %s", self.path, exc)
            done = writer.units  # counts the merge step's own unit

    async def _truncate_wal(self, writer: GroupCommitWriter) -> bool:
        """Rewind the WAL to empty between two commits: holding the writer's lock keeps commits
        out, so only a reader in another process (the admin CLI) can make it wait. False when
        such a reader kept it busy (retried later)."""
        conn = self._write_conn
        if conn is None:
            return False
        async with writer.db_lock:
            # Briefly: a long read elsewhere must not hold every commit up for busy_timeout.
            await conn.execute(f"PRAGMA busy_timeout = {TRUNCATE_BUSY_MS}")
            try:
                rows = list(await conn.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)"))
            finally:
                await conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        if rows and rows[0][0]:
            self.wal_truncations_busy += 1  # retried at the next round
            return False
        self.wal_truncations += 1
        return True

    async def wal_bytes(self) -> int:
        """The size of the -wal file now (0 when there is none)."""
        try:
            return (await aiofiles.os.stat(self.wal_path)).st_size
        except FileNotFoundError:
            return 0

    async def wal_stats(self) -> dict[str, int]:
        return {
            "wal_bytes": await self.wal_bytes(),
            "wal_limit_bytes": self.wal_limit_bytes,
            "wal_truncations": self.wal_truncations,
            "wal_truncations_busy": self.wal_truncations_busy,
        }

    async def _connect(self, target: str) -> AsyncConnection:
        conn = await AsyncConnection.connect(target, uri=target.startswith("file:"))
        try:
            await conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            await conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")  # searches reread FTS5 pages
            await conn.execute_fetchall("SELECT count(*) FROM sqlite_master")  # opens the file now
        except BaseException:
            await conn.close()  # else its thread outlives us and holds the process open
            raise
        return conn

    async def _check_integrity(self, conn: AsyncConnection) -> None:
        problem = quick_check_problem(await conn.execute_fetchall("PRAGMA quick_check"))
        if problem is not None:
            raise damaged_database(self.path, problem) from problem
        self.integrity.passed()

    def check_in_background(
        self,
        snapshot: Path | None,
        hold: asyncio.Event | None = None,
        after: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """Run ``quick_check`` after start, on a connection of its own, once ``after()`` is
        done (see sqlite_check.py); ``hold`` (a test hook) keeps it from starting until set."""
        self.integrity.start(snapshot, hold, after)

    def _refuse_writes(self, damage: DataDamagedError) -> None:
        self._damage = damage

    def _check_writable(self) -> None:
        if self._damage is not None:
            raise DataDamagedError(str(self._damage), self.path)
        if self._writer is None:
            raise SystemClosedError(f"the database {self.path} is not open for writing")

    async def close(self) -> None:
        """Commit what is queued and close; safe to call twice.

        Each step runs even when one before it failed (a full disk fails the checkpoint): the
        connections' threads must always stop. The first error is raised once all are closed.
        """
        await self.integrity.close()
        writer, self._writer = self._writer, None
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.cancel()
            await asyncio.gather(checkpointer, return_exceptions=True)
        errors: list[BaseException] = []
        if writer is not None:
            try:
                await writer.close()
                if self._write_conn is not None:
                    await self._write_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except (sqlite3.Error, ValueError) as exc:
                errors.append(StorageError(f"could not finish writing {self.path}: {exc}", self.path))
        for name in ("_read_conn", "_write_conn"):
            conn = getattr(self, name)
            setattr(self, name, None)
            if conn is not None:
                try:
                    await conn.close()
                except sqlite3.Error as exc:
                    errors.append(StorageError(f"could not close {self.path}: {exc}", self.path))
        if errors:
            raise errors[0]

    # -- writing -----------------------------------------------------------------------------

    @property
    def shared(self) -> bool:
        return False

    @property
    def location(self) -> str:
        return str(self.path)

    def listen(self, listener: ChangeListener) -> None:
        """No other process writes these files: nothing to be told."""

    def submit(self, unit: Unit) -> asyncio.Future[Outcome]:
        """Queue ``unit``; it resolves to committed (never to a conflict: see the module)."""
        return self._submit_statements(unit_statements(unit))

    def _submit_statements(self, statements: Sequence[Statement]) -> asyncio.Future[Outcome]:
        self._check_writable()
        assert self._writer is not None
        done = self._writer.submit(statements)
        outcome: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

        def resolve(future: asyncio.Future[None]) -> None:
            if outcome.done():
                return
            if future.cancelled():
                outcome.cancel()
            elif (error := future.exception()) is not None:
                outcome.set_exception(error)
            else:
                outcome.set_result(COMMITTED)

        done.add_done_callback(resolve)
        return outcome

    async def commit(self, statements: Sequence[Statement]) -> None:
        """Statements of the store's own upkeep (merge steps, the model record)."""
        self._check_writable()
        assert self._writer is not None
        await self._writer.submit(statements)

    async def reserve_memory_ids(self, count: int) -> list[int]:
        """Ids are handed out here, never reused, so a unit needs no RETURNING round trip."""
        if self._next_id is None:
            raise SystemClosedError(f"the database {self.path} is not open for writing")
        first, self._next_id = self._next_id, self._next_id + count
        return list(range(first, first + count))

    async def set_embedding_model(self, model: str, *, keep_vectors: bool = False) -> None:
        await self.commit(model_change_statements(model, keep_vectors))

    async def context_versions(self, user_ids: Sequence[str]) -> dict[str, int]:
        if not user_ids:
            return {}
        rows = await self.fetch(
            "SELECT user_id, version FROM contexts WHERE user_id IN (SELECT value FROM json_each(?))",
            (orjson.dumps(list(user_ids)).decode(),),
        )
        return {r[0]: int(r[1]) for r in rows}

    async def purge_erased(self) -> None:
        """Make deleted rows leave the files: FTS5's tombstoned terms and the WAL's old frames.

        Concurrent callers share one purge, which covers every delete committed before it began.
        """
        await self._purge()

    async def _purge_now(self) -> None:
        if not FTS_SECURE_DELETE:
            await self.commit([(FTS_OPTIMIZE, ())])
        await self.truncate_wal()

    async def truncate_wal(self) -> None:
        """Copy the WAL into the database and empty it now (an erasure's old frames with it)."""
        writer = self._writer
        if writer is None:
            raise SystemClosedError(f"the database {self.path} is not open for writing")
        # The check's read transaction would keep the WAL from being emptied: a check that is
        # reading ends first, and none begins meanwhile.
        async with self.integrity.reading:
            for _ in range(TRUNCATE_ATTEMPTS):
                if await self._truncate_wal(writer):
                    return
                await asyncio.sleep(TRUNCATE_RETRY_SECONDS)
        raise StorageError(
            f"could not empty the WAL of {self.path}: another connection kept it busy; "
            "stop long-running readers (admin commands) and try again",
            self.path,
        )

    def stats(self) -> dict[str, int]:
        w = self._writer
        if w is None:
            return {"commit_queue": 0, "batches": 0, "units": 0, "largest_batch": 0}
        return {
            "commit_queue": w.queue_depth,
            "batches": w.batches,
            "units": w.units,
            "largest_batch": w.largest_batch,
        }

    # -- reading -----------------------------------------------------------------------------

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        conn = self._read_conn
        if conn is None:
            raise SystemClosedError(f"the database {self.path} is not open")
        try:
            # One hop to SQLite's thread, and no statement left open between hops (an open one
            # made the background checkpoint on this connection fail with "table is locked").
            return list(await conn.execute_fetchall(sql, params))
        except sqlite3.DatabaseError as exc:
            if primary_code(exc) is None:  # e.g. a stored text that is not UTF-8
                raise StorageError(f"could not read {self.path}: {exc}", self.path) from exc
            raise database_error(self.path, exc) from exc

    @contextlib.asynccontextmanager
    async def consistent_reads(self) -> AsyncIterator[None]:
        """One read transaction on the read connection (never written through)."""
        await self.fetch("BEGIN")
        try:
            yield
        finally:
            await self.fetch("ROLLBACK")

    async def load_contexts(self) -> list[tuple[str, bytes]]:
        """Every stored context, as the JSON bytes it was written as (parse: ``stored_context``)."""
        rows = await self.fetch("SELECT user_id, CAST(data AS BLOB) FROM contexts")
        return [(r[0], r[1]) for r in rows]

    async def stored_version(self, user_id: str) -> int:
        """The highest version the contexts row or the history holds for ``user_id`` (0: none)."""
        rows = await self.fetch(
            "SELECT max(coalesce((SELECT version FROM contexts WHERE user_id = ?), 0),"
            " coalesce((SELECT max(version) FROM context_history WHERE user_id = ?), 0))",
            (user_id, user_id),
        )
        return int(rows[0][0])

    async def next_memory_id(self) -> int:
        """Ids are handed out here, never reused, so a unit needs no RETURNING round trip."""
        rows = await self.fetch(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'memories'), 0),"
            " coalesce((SELECT max(id) FROM memories), 0))"
        )
        return int(rows[0][0]) + 1

    async def history(self, user_id: str) -> list[HistoryEntry]:
        rows = await self.fetch(f"{HISTORY_SELECT} WHERE user_id = ? ORDER BY version", (user_id,))
        return [history_entry(r, self.path) for r in rows]

    async def history_entry(self, user_id: str, version: int) -> HistoryEntry | None:
        rows = await self.fetch(f"{HISTORY_SELECT} WHERE user_id = ? AND version = ?", (user_id, version))
        return history_entry(rows[0], self.path) if rows else None

    async def memories(
        self,
        user_id: str,
        *,
        limit: int = -1,
        offset: int = 0,
        kinds: Iterable[str] | None = None,
        scopes: Iterable[str] | None = None,
    ) -> list[Memory]:
        sql = f"SELECT {MEMORY_COLUMNS} FROM memories WHERE user_id = ?"
        params: list[Any] = [user_id]
        if kinds is not None:
            kinds = list(kinds)
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            params += kinds
        if scopes is not None:
            sql += " AND scope IN (SELECT value FROM json_each(?))"
            params.append(orjson.dumps(sorted(scopes)).decode())
        rows = await self.fetch(sql + " ORDER BY id LIMIT ? OFFSET ?", (*params, limit, offset))
        return [memory_from_row(r, self.path) for r in rows]

    async def memories_by_id(self, ids: Sequence[int]) -> dict[int, Memory]:
        if not ids:
            return {}
        rows = await self.fetch(
            f"SELECT {MEMORY_COLUMNS} FROM memories WHERE id IN ({','.join('?' * len(ids))})",
            list(ids),
        )
        return {r[0]: memory_from_row(r, self.path) for r in rows}

    async def scoped_ids(self, user_id: str, scopes: Iterable[str]) -> list[int]:
        """The ids of the user's memories said in ``scopes``: what a scoped search may score."""
        rows = await self.fetch(
            "SELECT id FROM memories INDEXED BY memories_by_user_scope WHERE user_id = ?"
            " AND scope IN (SELECT value FROM json_each(?))",
            (user_id, orjson.dumps(sorted(scopes)).decode()),
        )
        return [r[0] for r in rows]

    async def scopes_of(self, user_id: str) -> list[str]:
        """Every scope the user has memories in."""
        rows = await self.fetch(
            "SELECT DISTINCT scope FROM memories WHERE user_id = ? ORDER BY scope", (user_id,)
        )
        return [r[0] for r in rows]

    async def memories_in_scope(self, scope: str, user_id: str | None = None) -> list[Memory]:
        """The memories said in ``scope`` (of one user, or of everyone)."""
        sql = f"SELECT {MEMORY_COLUMNS} FROM memories WHERE scope = ?"
        params: tuple[Any, ...] = (scope,)
        if user_id is not None:
            sql += " AND user_id = ?"
            params = (scope, user_id)
        rows = await self.fetch(sql + " ORDER BY id", params)
        return [memory_from_row(r, self.path) for r in rows]

    async def memories_before(
        self, cutoff: datetime, kinds: Iterable[str], user_id: str | None = None
    ) -> list[Memory]:
        """Every memory of ``kinds`` made before ``cutoff`` (retention; of one user, or of
        everyone), oldest first."""
        sql = (
            f"SELECT {MEMORY_COLUMNS} FROM memories WHERE created_at < ?"
            " AND kind IN (SELECT value FROM json_each(?))"
        )
        params: list[Any] = [cutoff.isoformat(), orjson.dumps(sorted(kinds)).decode()]
        if user_id is not None:
            sql += " AND user_id = ?"
            params.append(user_id)
        rows = await self.fetch(sql + " ORDER BY id", params)
        return [memory_from_row(r, self.path) for r in rows]

    async def users_with_history_before(self, cutoff: datetime) -> list[str]:
        rows = await self.fetch(
            "SELECT DISTINCT user_id FROM context_history WHERE at < ? ORDER BY user_id",
            (cutoff.isoformat(),),
        )
        return [r[0] for r in rows]

    async def memories_by_source(self, source_id: str) -> list[Memory]:
        rows = await self.fetch(
            f"SELECT {MEMORY_COLUMNS} FROM memories WHERE source_id = ? ORDER BY id",
            (source_id,),
        )
        return [memory_from_row(r, self.path) for r in rows]

    async def memory_ids(self, user_id: str) -> list[int]:
        rows = await self.fetch("SELECT id FROM memories WHERE user_id = ?", (user_id,))
        return [r[0] for r in rows]

    async def unembedded(self) -> list[Memory]:
        rows = await self.fetch(f"SELECT {MEMORY_COLUMNS} FROM memories WHERE embedding IS NULL ORDER BY id")
        return [memory_from_row(r, self.path) for r in rows]

    async def embedding_watermark(self) -> tuple[int, int]:
        """(count, highest id) of the memories that have an embedding."""
        rows = await self.fetch(
            "SELECT count(*), coalesce(max(id), 0) FROM memories WHERE embedding IS NOT NULL"
        )
        return int(rows[0][0]), int(rows[0][1])

    async def embeddings_for(self, ids: Sequence[int]) -> list[tuple[int, str, bytes]]:
        if not ids:
            return []
        rows = await self.fetch(
            "SELECT id, user_id, embedding FROM memories WHERE embedding IS NOT NULL"
            f" AND id IN ({','.join('?' * len(ids))})",
            list(ids),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def history_since(self, user_id: str, at: datetime | None) -> list[HistoryEntry]:
        """The user's history states stored at or after ``at`` (all of them for None)."""
        if at is None:
            return await self.history(user_id)
        rows = await self.fetch(
            f"{HISTORY_SELECT} WHERE user_id = ? AND at >= ? ORDER BY version", (user_id, at.isoformat())
        )
        return [history_entry(r, self.path) for r in rows]

    async def erasures(self, user_id: str | None = None) -> list[ErasureRecord]:
        """The erasure log, oldest first: every forget, with no content."""
        sql = "SELECT user_id, at, actor, request, rows FROM erasures"
        params: tuple[Any, ...] = ()
        if user_id is not None:
            sql += " WHERE user_id = ?"
            params = (user_id,)
        rows = await self.fetch(sql + " ORDER BY id", params)
        return [ErasureRecord(r[0], parse_time("at", r[1]), r[2], r[3], int(r[4])) for r in rows]

    async def database_id(self) -> str:
        """The id this database got when made (a copy shares it; a rebuilt one gets a new one)."""
        value = await self.get_meta("database_id")
        if value is None:
            raise StorageError(f"database {self.path} has no database id; open it writable once", self.path)
        return value

    async def get_meta(self, key: str) -> str | None:
        rows = await self.fetch("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    async def embedded_ids(self) -> list[tuple[int, str]]:
        # Two index-only scans (every id and owner, less the ids of the partial index of the
        # unembedded), not a scan of the table itself: its rows carry 1.5 KB vectors.
        rows = await self.fetch(
            "SELECT id, user_id FROM memories INDEXED BY memories_by_user WHERE id NOT IN"
            " (SELECT id FROM memories INDEXED BY memories_unembedded WHERE embedding IS NULL)"
        )
        return [(r[0], r[1]) for r in rows]

    async def lexical_search(
        self,
        user_id: str,
        terms: Sequence[str],
        limit: int,
        kinds: Iterable[str] | None = None,
        context_weight: float = 1.0,
        scopes: Iterable[str] | None = None,
    ) -> list[tuple[int, float]]:
        """(memory id, BM25 with the user's own IDF, higher is better), best first, of the
        user's memories holding any of ``terms`` (from ``lexical.query_terms``).

        One statement: the user's row count, FTS5's row count, then one single-term branch per
        term, each joined to the user's ids (the join, not the term, decides ownership). A query
        of more than ``MAX_QUERY_TERMS`` terms is first cut to its most informative ones
        (``lexical.informative_terms``), which costs one more statement. ``scopes`` (None: all)
        joins only the memories said in those scopes, so the limit counts allowed rows only.
        """
        if len(terms) > MAX_QUERY_TERMS:  # else the statement would pass SQLite's compound limit
            terms = informative_terms(terms, await self._term_hits(user_id, terms))
        if not terms:
            return []
        params: list[Any] = [user_id]
        scope_list = None if scopes is None else orjson.dumps(sorted(scopes)).decode()
        for term in terms:
            params += [context_weight, user_id]
            if scope_list is not None:
                params.append(scope_list)
            params.append(_fts_phrase(term))
        rows = await self.fetch(_lexical_sql(len(terms), kinds is not None, scope_list is not None), params)
        _, user_rows, averages, _ = rows[0]
        per_term: list[list[tuple[int, float]]] = [[] for _ in terms]
        kind_of: dict[int, str] = {}
        for term, memory_id, score, kind in rows[1:]:
            per_term[term].append((memory_id, -float(score)))
            kind_of[memory_id] = kind
        scores = user_bm25(per_term, read_varint(averages) if averages else 0, int(user_rows))
        if kinds is not None:
            wanted = set(kinds)
            scores = {mid: score for mid, score in scores.items() if kind_of[mid] in wanted}
        return sorted(scores.items(), key=lambda item: (-item[1], -item[0]))[:limit]

    async def _term_hits(self, user_id: str, terms: Sequence[str]) -> list[int]:
        """How many of the user's memories hold each term, in one statement of any length."""
        phrases = orjson.dumps([_fts_phrase(term) for term in terms]).decode()
        rows = await self.fetch(_TERM_HITS_SQL, (user_id, phrases))
        counts = {int(key): int(count) for key, count in rows}
        return [counts[i] for i in range(len(terms))]

    async def last_memory(self, user_id: str) -> Memory | None:
        rows = await self.fetch(
            f"SELECT {MEMORY_COLUMNS} FROM memories WHERE user_id = ? ORDER BY id DESC LIMIT 1",
            (user_id,),
        )
        return memory_from_row(rows[0], self.path) if rows else None

    async def session_neighbours(self, ids: Iterable[int]) -> dict[int, tuple[int | None, int | None]]:
        """(previous, next) memory in the same session, for each id that has one."""
        id_list = list(ids)
        if not id_list:
            return {}
        marks = ",".join("?" * len(id_list))
        rows = await self.fetch(
            f"SELECT id, session_prev FROM memories WHERE id IN ({marks}) AND session_prev IS NOT NULL"
            f" UNION ALL SELECT id, session_prev FROM memories WHERE session_prev IN ({marks})",
            (*id_list, *id_list),
        )
        links: dict[int, list[int | None]] = {}
        for mid, prev in rows:
            links.setdefault(mid, [None, None])[0] = prev
            links.setdefault(prev, [None, None])[1] = mid
        return {mid: (pair[0], pair[1]) for mid, pair in links.items()}

    async def count_memories(self, user_id: str) -> int:
        rows = await self.fetch("SELECT count(*) FROM memories WHERE user_id = ?", (user_id,))
        return int(rows[0][0])

    async def context_data(self, user_id: str) -> bytes | None:
        """The stored JSON of one user's context."""
        rows = await self.fetch("SELECT CAST(data AS BLOB) FROM contexts WHERE user_id = ?", (user_id,))
        return bytes(rows[0][0]) if rows else None

    async def memory_counts(self) -> dict[str, int]:
        rows = await self.fetch("SELECT user_id, count(*) FROM memories GROUP BY user_id")
        return {r[0]: int(r[1]) for r in rows}

    async def version_count(self, user_id: str) -> int:
        rows = await self.fetch("SELECT count(*) FROM context_history WHERE user_id = ?", (user_id,))
        return int(rows[0][0])

    async def lexical_rows(self) -> tuple[int, int]:
        """(rows in the FTS5 table, rows of it whose memory is gone)."""
        total = await self.fetch("SELECT count(*) FROM memories_fts")
        orphans = await self.fetch(
            "SELECT count(*) FROM memories_fts WHERE rowid NOT IN (SELECT id FROM memories)"
        )
        return int(total[0][0]), int(orphans[0][0])

    async def schema_version(self) -> int:
        rows = await self.fetch("SELECT coalesce(max(version), 0) FROM schema_version")
        return int(rows[0][0])

    async def integrity_problems(self) -> list[str]:
        """What ``PRAGMA integrity_check`` reports; ["ok"] for a sound file."""
        return [" ".join(str(r[0]).split()) for r in await self.fetch("PRAGMA integrity_check")]

    async def count(self, table: str) -> int:
        if table not in ("contexts", "context_history", "memories"):
            raise ValueError(table)
        rows = await self.fetch(f"SELECT count(*) FROM {table}")
        return int(rows[0][0])


# JSON columns are read as the bytes stored, so one that bit rot made invalid UTF-8 is reported
# as that row's damage (by parse_stored_json) instead of failing the whole query.
HISTORY_SELECT = (
    "SELECT user_id, version, at, actor, CAST(change AS BLOB), CAST(state AS BLOB) FROM context_history"
)


MEMORY_COLUMNS = "id, user_id, text, kind, created_at, CAST(metadata AS BLOB), source_id, scope"


def _fts_phrase(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


# A correlated subquery per term over json_each, not a compound SELECT: no limit on the terms.
_TERM_HITS_SQL = (
    "SELECT j.key, (SELECT count(*) FROM memories_fts"
    " CROSS JOIN memories m INDEXED BY memories_by_user ON m.user_id = ? AND m.id = memories_fts.rowid"
    " WHERE memories_fts MATCH j.value) FROM json_each(?) j"
)


@functools.lru_cache(maxsize=256)
def _lexical_sql(terms: int, with_kind: bool, with_scope: bool = False) -> str:
    # BM25 column weights: the memory's own words 1, the words of the previous turn of its
    # session ``context_weight`` (retrieval.context_weight). The join goes through the covering
    # index memories_by_user (CROSS JOIN pins that order; the other order runs MATCH per row).
    # FTS5 keeps its row count as the first varint of the record with id 1 of its data table.
    head = (
        "SELECT -1, count(*), (SELECT block FROM memories_fts_data WHERE id = 1), NULL"
        " FROM memories INDEXED BY memories_by_user WHERE user_id = ?"
    )
    # The scope filter is part of the join (a JSON array of the scopes allowed), not a filter
    # of the results: what is not allowed is never a candidate.
    kind = "m.kind" if with_kind else "NULL"
    scope = " AND m.scope IN (SELECT value FROM json_each(?))" if with_scope else ""
    branch = (
        " UNION ALL SELECT {n}, memories_fts.rowid, bm25(memories_fts, 1.0, ?), "
        + kind
        + " FROM memories_fts"
        " CROSS JOIN memories m INDEXED BY memories_by_user ON m.user_id = ? AND m.id = memories_fts.rowid"
        + scope
        + " WHERE memories_fts MATCH ?"
    )
    return head + "".join(branch.format(n=n) for n in range(terms))
