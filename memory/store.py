"""SQLite, the source of truth: schema and migrations, reads, and the writes as statements.

All SQL of the project lives here. Writes are built as statement lists and committed by the
group-commit writer; reads use a second connection, which in WAL mode never blocks on it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from memory.context import UserContext, freeze_json, parse_time
from memory.errors import StorageError, SystemClosedError
from memory.group_commit import GroupCommitWriter, Statement, run_on_connection_thread
from memory.lexical import read_varint, user_bm25, user_terms
from memory.records import HistoryEntry, Memory
from memory.supervisor import Supervisor, TaskName

log = logging.getLogger(__name__)

Migration = Callable[[sqlite3.Connection], None]
CHECKPOINT_INTERVAL = 1.0
# FTS5 looks a term up once per index segment: merging whenever 2 segments share a level, and
# a bounded merge step after writes (at most a few ms of the writer), keeps searches at 1-3.
FTS_USERMERGE = 2
FTS_MERGE_STEP = "INSERT INTO memories_fts (memories_fts, rank) VALUES ('merge', 64)"
CACHE_KIB = 65_536


def _script(db: sqlite3.Connection, script: str) -> None:
    # Not executescript: it would COMMIT the migration's open transaction first.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _v1_core(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE contexts (
            user_id TEXT PRIMARY KEY,
            version INTEGER NOT NULL,
            data TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE context_history (
            user_id TEXT NOT NULL,
            version INTEGER NOT NULL,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            change TEXT NOT NULL,
            state TEXT NOT NULL,
            PRIMARY KEY (user_id, version)
        ) WITHOUT ROWID;
        CREATE TABLE memories (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id TEXT NOT NULL,
            text TEXT NOT NULL,
            kind TEXT NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            source_id TEXT,
            session_prev INTEGER,
            embedding BLOB
        );
        CREATE INDEX memories_by_session_prev ON memories (session_prev) WHERE session_prev IS NOT NULL;
        CREATE INDEX memories_by_user ON memories (user_id, id);
        CREATE INDEX memories_by_source ON memories (source_id) WHERE source_id IS NOT NULL;
        CREATE INDEX memories_unembedded ON memories (id) WHERE embedding IS NULL;
        """,
    )


def _v2_fts(db: sqlite3.Connection) -> None:
    # The owner column holds a token made from the user id, so MATCH itself scopes a search
    # to one user (fast); the join on memories.user_id then makes isolation exact.
    _script(
        db,
        """
        CREATE VIRTUAL TABLE memories_fts USING fts5(
            owner, body, context, tokenize = 'porter unicode61 remove_diacritics 2'
        );
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID
        """,
    )
    rows = db.execute("SELECT id, user_id, text FROM memories").fetchall()
    db.executemany(
        "INSERT INTO memories_fts (rowid, owner, body, context) VALUES (?, ?, ?, '')",
        [(mid, owner_token(uid), body) for mid, uid, body in rows],
    )


def _v3_user_terms(db: sqlite3.Connection) -> None:
    # Every word becomes a term of its user's own (memory/lexical.py): a search reads only the
    # user's posting lists. The stored body and context are re-tokenised, so each memory keeps
    # the previous turn it was indexed with even if that turn was forgotten since.
    db.create_function("user_terms", 2, user_terms, deterministic=True)
    _script(
        db,
        f"""
        CREATE VIRTUAL TABLE memories_terms USING fts5(body, context, tokenize = 'porter ascii');
        INSERT INTO memories_terms (rowid, body, context)
            SELECT f.rowid, user_terms(m.user_id, f.body), user_terms(m.user_id, f.context)
            FROM memories_fts f JOIN memories m ON m.id = f.rowid;
        DROP TABLE memories_fts;
        ALTER TABLE memories_terms RENAME TO memories_fts;
        INSERT INTO memories_fts (memories_fts, rank) VALUES ('usermerge', {FTS_USERMERGE});
        INSERT INTO memories_fts (memories_fts) VALUES ('optimize')
        """,
    )


MIGRATIONS: tuple[Migration, ...] = (_v1_core, _v2_fts, _v3_user_terms)
SCHEMA_VERSION = len(MIGRATIONS)


@functools.lru_cache(maxsize=65_536)
def owner_token(user_id: str) -> str:
    """One FTS5 token per user id that no other id shares (the owner column of schema v2)."""
    return "u" + "".join(f"{byte:03d}" for byte in user_id.encode())


def migrate(db: sqlite3.Connection, path: Path) -> list[int]:
    """Bring the schema forward; returns the versions applied."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TEXT NOT NULL)"
    )
    current = db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise StorageError(
            f"database {path} has schema version {current}, newer than this program's "
            f"{SCHEMA_VERSION}; upgrade memory-bot to open it",
            path,
        )
    applied = []
    for version in range(current + 1, SCHEMA_VERSION + 1):
        db.execute("BEGIN")
        try:
            MIGRATIONS[version - 1](db)
            db.execute("INSERT INTO schema_version VALUES (?, datetime('now'))", (version,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied


def damaged_database(path: Path, cause: object, snapshot: Path | None = None) -> StorageError:
    restore = (
        f"the contexts can be rebuilt from the snapshot {snapshot}: stop the bot, move {path} "
        f"and its -wal and -shm files aside, and start again"
        if snapshot is not None
        else "restore it from a backup"
    )
    return StorageError(
        f"database {path} is damaged ({cause}); {restore}. Memories live only in the database: "
        "keep the damaged file, `sqlite3 FILE .recover` may save them",
        path,
    )


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
        supervisor: Supervisor | None = None,
    ) -> None:
        self.path = path
        self._supervisor = supervisor or Supervisor()
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._max_batch = max_batch
        self._readonly = readonly
        self._write_conn: aiosqlite.Connection | None = None
        self._read_conn: aiosqlite.Connection | None = None
        self._writer: GroupCommitWriter | None = None
        self._checkpointer: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self, *, integrity_check: bool = True) -> list[int]:
        """Open (creating and migrating when writable); returns the migrations applied."""
        applied: list[int] = []
        try:
            if self._readonly:
                self._read_conn = await self._connect(f"file:{self.path}?mode=ro")
                if integrity_check:
                    await self._check_integrity(self._read_conn)
                return applied
            self._write_conn = await self._connect(str(self.path))
            await self._write_conn.execute("PRAGMA journal_mode = WAL")
            # Checkpoints run on the read connection's thread (below), not inside a commit.
            await self._write_conn.execute("PRAGMA wal_autocheckpoint = 0")
            await self._write_conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            if integrity_check:
                await self._check_integrity(self._write_conn)
            applied = await run_on_connection_thread(self._write_conn, migrate, self.path)
            self._read_conn = await self._connect(str(self.path))
        except sqlite3.DatabaseError as exc:
            await self.close()
            raise damaged_database(self.path, exc) from exc
        self._writer = GroupCommitWriter(self._write_conn, str(self.path), self._max_batch, self._supervisor)
        self._writer.start()
        # Nothing waits on the checkpointer: its death only shows in health and fails the system.
        self._checkpointer = self._supervisor.spawn(
            TaskName.CHECKPOINTER, self._checkpoint_loop, lambda error: None
        )
        return applied

    async def _checkpoint_loop(self) -> None:
        """After writes: a bounded FTS5 merge step, and the WAL copied into the database, in the
        background so that commits never wait for either."""
        done = 0
        while self._writer is not None and self._read_conn is not None:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            writer, conn = self._writer, self._read_conn
            if writer is None or conn is None or writer.units == done:
                continue
            self._supervisor.fault_point(TaskName.CHECKPOINTER)
            try:
                await writer.submit([(FTS_MERGE_STEP, ())])
                await conn.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
            except (sqlite3.Error, StorageError) as exc:
                log.warning("background upkeep of %s failed (retried later): %s", self.path, exc)
            done = writer.units  # counts the merge step's own unit

    async def _connect(self, target: str) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(target, uri=target.startswith("file:"))
        try:
            await conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            await conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")  # searches reread FTS5 pages
        except BaseException:
            await conn.close()  # else its thread outlives us and holds the process open
            raise
        return conn

    async def _check_integrity(self, conn: aiosqlite.Connection) -> None:
        async with conn.execute("PRAGMA quick_check") as cursor:
            rows = [row[0] for row in await cursor.fetchall()]
        if rows != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(str(r) for r in rows[:5]))

    async def close(self) -> None:
        """Commit what is queued and close; safe to call twice.

        Each step runs even when one before it failed (a full disk fails the checkpoint): the
        connections' threads must always stop. The first error is raised once all are closed.
        """
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

    def submit(self, statements: Sequence[Statement]) -> asyncio.Future[None]:
        if self._writer is None:
            raise SystemClosedError(f"the database {self.path} is not open for writing")
        return self._writer.submit(statements)

    async def commit(self, statements: Sequence[Statement]) -> None:
        await self.submit(statements)

    def writer_stats(self) -> dict[str, int]:
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
            raise StorageError(f"could not read {self.path}: {exc}", self.path) from exc

    async def load_contexts(self) -> list[tuple[str, str]]:
        rows = await self.fetch("SELECT user_id, data FROM contexts")
        return [(r[0], r[1]) for r in rows]

    async def next_memory_id(self) -> int:
        """Ids are handed out here, never reused, so a unit needs no RETURNING round trip."""
        rows = await self.fetch(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'memories'), 0),"
            " coalesce((SELECT max(id) FROM memories), 0))"
        )
        return int(rows[0][0]) + 1

    async def history(self, user_id: str) -> list[HistoryEntry]:
        rows = await self.fetch(
            "SELECT user_id, version, at, actor, change, state FROM context_history"
            " WHERE user_id = ? ORDER BY version",
            (user_id,),
        )
        return [_history_entry(r) for r in rows]

    async def history_entry(self, user_id: str, version: int) -> HistoryEntry | None:
        rows = await self.fetch(
            "SELECT user_id, version, at, actor, change, state FROM context_history"
            " WHERE user_id = ? AND version = ?",
            (user_id, version),
        )
        return _history_entry(rows[0]) if rows else None

    async def memories(
        self, user_id: str, *, limit: int = -1, offset: int = 0, kinds: Iterable[str] | None = None
    ) -> list[Memory]:
        sql = f"SELECT {MEMORY_COLUMNS} FROM memories WHERE user_id = ?"
        params: list[Any] = [user_id]
        if kinds is not None:
            kinds = list(kinds)
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            params += kinds
        rows = await self.fetch(sql + " ORDER BY id LIMIT ? OFFSET ?", (*params, limit, offset))
        return [memory_from_row(r) for r in rows]

    async def memories_by_id(self, ids: Sequence[int]) -> dict[int, Memory]:
        if not ids:
            return {}
        rows = await self.fetch(
            f"SELECT {MEMORY_COLUMNS} FROM memories WHERE id IN ({','.join('?' * len(ids))})",
            list(ids),
        )
        return {r[0]: memory_from_row(r) for r in rows}

    async def memories_by_source(self, source_id: str) -> list[Memory]:
        rows = await self.fetch(
            f"SELECT {MEMORY_COLUMNS} FROM memories WHERE source_id = ? ORDER BY id",
            (source_id,),
        )
        return [memory_from_row(r) for r in rows]

    async def memory_ids(self, user_id: str) -> list[int]:
        rows = await self.fetch("SELECT id FROM memories WHERE user_id = ?", (user_id,))
        return [r[0] for r in rows]

    async def unembedded(self) -> list[Memory]:
        rows = await self.fetch(f"SELECT {MEMORY_COLUMNS} FROM memories WHERE embedding IS NULL ORDER BY id")
        return [memory_from_row(r) for r in rows]

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

    async def get_meta(self, key: str) -> str | None:
        rows = await self.fetch("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    @staticmethod
    def model_change_statements(model: str) -> list[Statement]:
        """Record the embedding model; embeddings of another model are dropped to be remade."""
        return [
            ("UPDATE memories SET embedding = NULL WHERE embedding IS NOT NULL", ()),
            (
                "INSERT INTO meta (key, value) VALUES ('embedding_model', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (model,),
            ),
        ]

    async def embedded_ids(self) -> list[tuple[int, str]]:
        rows = await self.fetch("SELECT id, user_id FROM memories WHERE embedding IS NOT NULL")
        return [(r[0], r[1]) for r in rows]

    async def lexical_search(
        self,
        user_id: str,
        terms: Sequence[str],
        limit: int,
        kinds: Iterable[str] | None = None,
        context_weight: float = 1.0,
    ) -> list[tuple[int, float]]:
        """(memory id, BM25 with the user's own IDF, higher is better), best first, of the
        user's memories holding any of ``terms`` (from ``lexical.query_terms``).

        One statement: the user's row count, FTS5's row count, then one single-term branch per
        term, each joined to the user's ids (the join, not the term, decides ownership).
        """
        if not terms:
            return []
        params: list[Any] = [user_id]
        for term in terms:
            params += [context_weight, user_id, '"' + term.replace('"', '""') + '"']
        rows = await self.fetch(_lexical_sql(len(terms), kinds is not None), params)
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

    async def last_memory(self, user_id: str) -> Memory | None:
        rows = await self.fetch(
            f"SELECT {MEMORY_COLUMNS} FROM memories WHERE user_id = ? ORDER BY id DESC LIMIT 1",
            (user_id,),
        )
        return memory_from_row(rows[0]) if rows else None

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

    async def context_data(self, user_id: str) -> str | None:
        """The stored JSON of one user's context."""
        rows = await self.fetch("SELECT data FROM contexts WHERE user_id = ?", (user_id,))
        return str(rows[0][0]) if rows else None

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


def _history_entry(row: sqlite3.Row | tuple[Any, ...]) -> HistoryEntry:
    return HistoryEntry(
        user_id=row[0],
        version=row[1],
        at=parse_time("at", row[2]),
        actor=row[3],
        change=freeze_json(orjson.loads(row[4])),
        context=UserContext.from_dict(orjson.loads(row[5])),
    )


MEMORY_COLUMNS = "id, user_id, text, kind, created_at, metadata, source_id"


def memory_from_row(row: sqlite3.Row | tuple[Any, ...]) -> Memory:
    return Memory(
        id=row[0],
        user_id=row[1],
        text=row[2],
        kind=row[3],
        created_at=parse_time("created_at", row[4]),
        metadata=freeze_json(orjson.loads(row[5])),
        source_id=row[6],
    )


# -- statements the writer commits ---------------------------------------------------------

UPSERT_CONTEXT = (
    "INSERT INTO contexts (user_id, version, data) VALUES (?, ?, ?)"
    " ON CONFLICT (user_id) DO UPDATE SET version = excluded.version, data = excluded.data"
)
INSERT_HISTORY = (
    "INSERT INTO context_history (user_id, version, at, actor, change, state) VALUES (?, ?, ?, ?, ?, ?)"
)
INSERT_MEMORY = (
    "INSERT INTO memories (id, user_id, text, kind, metadata, created_at, source_id, session_prev)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_FTS = "INSERT INTO memories_fts (rowid, body, context) VALUES (?, ?, ?)"


@functools.lru_cache(maxsize=128)
def _lexical_sql(terms: int, with_kind: bool) -> str:
    # BM25 column weights: the memory's own words 1, the words of the previous turn of its
    # session ``context_weight`` (retrieval.context_weight). The join goes through the covering
    # index memories_by_user (CROSS JOIN pins that order; the other order runs MATCH per row).
    # FTS5 keeps its row count as the first varint of the record with id 1 of its data table.
    head = (
        "SELECT -1, count(*), (SELECT block FROM memories_fts_data WHERE id = 1), NULL"
        " FROM memories INDEXED BY memories_by_user WHERE user_id = ?"
    )
    kind = "m.kind" if with_kind else "NULL"
    branch = (
        " UNION ALL SELECT {n}, memories_fts.rowid, bm25(memories_fts, 1.0, ?), "
        + kind
        + " FROM memories_fts"
        " CROSS JOIN memories m INDEXED BY memories_by_user ON m.user_id = ? AND m.id = memories_fts.rowid"
        " WHERE memories_fts MATCH ?"
    )
    return head + "".join(branch.format(n=n) for n in range(terms))


def context_statements(
    ctx: UserContext, encoded: str, at: datetime, actor: str, change: dict[str, Any]
) -> list[Statement]:
    """Write the current state and append its history row (the state after the change)."""
    return [
        (UPSERT_CONTEXT, (ctx.user_id, ctx.version, encoded)),
        (
            INSERT_HISTORY,
            (
                ctx.user_id,
                ctx.version,
                at.isoformat(),
                actor,
                orjson.dumps(change).decode(),
                encoded,
            ),
        ),
    ]


def memory_statements(memory: Memory, body: str, context: str, session_prev: int | None) -> list[Statement]:
    return [
        (
            INSERT_MEMORY,
            (
                memory.id,
                memory.user_id,
                memory.text,
                memory.kind,
                orjson.dumps(memory.metadata, default=dict).decode(),
                memory.created_at.isoformat(),
                memory.source_id,
                session_prev,
            ),
        ),
        (INSERT_FTS, (memory.id, user_terms(memory.user_id, body), user_terms(memory.user_id, context))),
    ]


def forget_memory_statements(memory_id: int) -> list[Statement]:
    return [
        ("DELETE FROM memories_fts WHERE rowid = ?", (memory_id,)),
        ("DELETE FROM memories WHERE id = ?", (memory_id,)),
    ]


def forget_user_statements(user_id: str) -> list[Statement]:
    return [
        (
            "DELETE FROM memories_fts WHERE rowid IN (SELECT id FROM memories WHERE user_id = ?)",
            (user_id,),
        ),
        ("DELETE FROM memories WHERE user_id = ?", (user_id,)),
        ("DELETE FROM context_history WHERE user_id = ?", (user_id,)),
        ("DELETE FROM contexts WHERE user_id = ?", (user_id,)),
    ]


def embedding_statement(memory_id: int, vector: bytes) -> Statement:
    return ("UPDATE memories SET embedding = ? WHERE id = ?", (vector, memory_id))
