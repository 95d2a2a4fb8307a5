"""PostgreSQL + pgvector, the shared backend: several processes (bot shards) on one memory.

Writes are units of the storage protocol, committed in batches by one writer per process
(``postgres_writer.py``) with an optimistic version check per unit: no database lock is held
across Python code, and a unit built on a version another process replaced comes back as a
``Conflict``. Reads go through a small pool and return exactly what ``SqliteStore`` returns for
the same data (records, order, BM25 scores). Other processes' changes arrive by LISTEN/NOTIFY
(``postgres_notify.py``). Backups are the database's own (``pg_dump``); there is no folder lock
and no JSON snapshot.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import uuid
import zlib
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from memory.errors import StorageError, SystemClosedError
from memory.lexical import MAX_QUERY_TERMS, informative_terms
from memory.records import ErasureRecord, HistoryEntry, Memory
from memory.storage.postgres_connect import connection_error
from memory.storage.postgres_lexical import Document, bm25_scores, query_stems, tsquery
from memory.storage.postgres_notify import ChangeFeed
from memory.storage.postgres_records import (
    HISTORY_SELECT,
    MEMORY_COLUMNS,
    history_entry,
    memory_from_row,
    register_vector,
)
from memory.storage.postgres_schema import ID_BLOCK, SCHEMA_VERSION, TOTALS_SHARDS, migrate
from memory.storage.postgres_writer import PostgresWriter
from memory.storage.protocol import ChangeListener, Outcome, Unit
from memory.storage.urls import masked_url
from memory.supervisor import Supervisor, TaskName

log = logging.getLogger(__name__)

_CONNECTION_LOST = (
    asyncpg.InternalClientError,  # a connection killed under an operation in progress
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    OSError,
)
CLAIM_LEASE_SECONDS = 60.0
CLAIM_LIMIT = 10_000
POOL_SIZE = 4
CONNECT_TIMEOUT = 10.0
_Pinned = tuple[object, "asyncpg.Connection | PoolConnectionProxy[Any]", asyncio.Lock]
_PINNED: contextvars.ContextVar[_Pinned | None] = contextvars.ContextVar("memory_bot_pg_pinned", default=None)


class PostgresStore:
    """One PostgreSQL database shared by every process that opens it."""

    def __init__(
        self,
        url: str,
        *,
        max_batch: int = 256,
        supervisor: Supervisor | None = None,
        vector_dim: int = 384,
        readonly: bool = False,
        pool_size: int = POOL_SIZE,
        claim_lease: float = CLAIM_LEASE_SECONDS,
        claim_limit: int = CLAIM_LIMIT,
    ) -> None:
        self._url = url
        self._supervisor = supervisor or Supervisor()
        self._max_batch = max_batch
        self._dim = vector_dim
        self._readonly = readonly
        self._pool_size = pool_size
        self._claim_lease = claim_lease
        self._claim_limit = claim_limit
        # Who this process is in notifications (its own are ignored) and in pg_stat_activity.
        self.token = uuid.uuid4().hex[:12]
        self._shard = zlib.crc32(f"{os.getpid()}:{self.token}".encode()) % TOTALS_SHARDS
        self._pool: asyncpg.Pool | None = None
        self._writer: PostgresWriter | None = None
        self._feed: ChangeFeed | None = None
        self._feed_task: asyncio.Task[None] | None = None
        self._ids: list[range] = []
        self._ids_lock = asyncio.Lock()
        self.path = Path(self.location)  # what record parsing names as the damaged "file"

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def shared(self) -> bool:
        return True

    @property
    def location(self) -> str:
        return masked_url(self._url)

    async def connect(self, purpose: str, *, vectors: bool = True) -> asyncpg.Connection:
        """A connection of its own (the writer's, the listener's), with the vector codec
        (not before the migration has made sure the extension exists)."""
        try:
            conn = await asyncpg.connect(
                self._url,
                timeout=CONNECT_TIMEOUT,
                server_settings=self._settings(purpose),
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise connection_error(self._url, exc) from None
        try:
            if vectors:
                await register_vector(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    def _settings(self, purpose: str) -> dict[str, str]:
        # Acknowledged means durable whatever the server's default is.
        return {"application_name": f"memory-bot {purpose} {self.token}", "synchronous_commit": "on"}

    async def open(self, *, integrity_check: bool = True) -> list[int]:
        """Connect, migrate (unless read-only) and start the writer; the migrations applied."""
        conn = await self.connect("migrate", vectors=False)
        try:
            if self._readonly:
                applied: list[int] = []
                await self._check_schema(conn)
            else:
                applied = await migrate(conn, self.location, self._dim)
        finally:
            await conn.close()
        try:
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=self._pool_size,
                timeout=CONNECT_TIMEOUT,
                server_settings=self._settings("reader"),
                init=register_vector,
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise connection_error(self._url, exc) from None
        if not self._readonly:
            self._writer = PostgresWriter(
                lambda: self.connect("writer"),
                self.location,
                self.token,
                self._shard,
                self._max_batch,
                self._supervisor,
                self._claim_lease,
            )
            self._writer.start()
        return applied

    async def _check_schema(self, conn: asyncpg.Connection) -> None:
        exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
        version = await conn.fetchval("SELECT max(version) FROM schema_version") if exists else None
        if version is None:
            raise StorageError(f"{self.location} holds no memory-bot database; open it writable once")
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"database {self.location} has schema version {version}, newer than this program's "
                f"{SCHEMA_VERSION}; upgrade memory-bot to open it"
            )

    async def close(self) -> None:
        """Commit what is queued and close; safe to call twice."""
        writer, self._writer = self._writer, None
        feed_task, self._feed_task = self._feed_task, None
        pool, self._pool = self._pool, None
        errors: list[BaseException] = []
        if feed_task is not None:
            feed_task.cancel()
            await asyncio.gather(feed_task, return_exceptions=True)
        if writer is not None:
            try:
                await writer.close()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                errors.append(StorageError(f"could not finish writing {self.location}: {exc}"))
        if pool is not None and writer is not None:
            try:
                # What this process leased and did not embed is anyone's again at once; only a
                # crash leaves rows waiting for their lease to run out.
                await pool.execute(
                    "UPDATE memories SET claimed_by = NULL, claimed_until = NULL"
                    " WHERE claimed_by = $1 AND embedding IS NULL",
                    self.token,
                    timeout=CONNECT_TIMEOUT,
                )
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                errors.append(
                    StorageError(f"could not release the embedding leases on {self.location}: {exc}")
                )
        if pool is not None:
            try:
                await pool.close()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                errors.append(StorageError(f"could not close {self.location}: {exc}"))
        if errors:
            raise errors[0]

    # -- writing -----------------------------------------------------------------------------

    def submit(self, unit: Unit) -> asyncio.Future[Outcome]:
        """Queue ``unit``: it resolves after COMMIT, to committed or to a conflict."""
        if self._writer is None:
            raise SystemClosedError(f"the database {self.location} is not open for writing")
        return self._writer.submit(unit)

    async def reserve_memory_ids(self, count: int) -> list[int]:
        """Ids from blocks of the sequence (one round trip per ``ID_BLOCK`` ids, not per id)."""
        async with self._ids_lock:
            have = sum(len(r) for r in self._ids)
            if have < count:
                blocks = -(-(count - have) // ID_BLOCK)
                rows = await self._fetch("SELECT nextval('memory_ids') FROM generate_series(1, $1)", blocks)
                self._ids += [range(r[0], r[0] + ID_BLOCK) for r in rows]
            out: list[int] = []
            while len(out) < count:
                block = self._ids[0]
                take = min(count - len(out), len(block))
                out += block[:take]
                if take == len(block):
                    self._ids.pop(0)
                else:
                    self._ids[0] = block[take:]
            return out

    async def purge_erased(self) -> None:
        """Nothing to do beyond the deletes: a deleted row's text stays in its table's pages
        and in the WAL until VACUUM reuses the space and checkpoints recycle the segments,
        which is the database's own upkeep (autovacuum); there is no separate lexical index
        holding terms of its own, as FTS5 does. Backups (``pg_dump``) must be handled apart."""

    async def set_embedding_model(self, model: str, *, keep_vectors: bool = False) -> None:
        pool = self._require_pool()
        async with pool.acquire() as conn, conn.transaction():
            if not keep_vectors:
                await conn.execute(
                    "UPDATE memories SET embedding = NULL, claimed_by = NULL, claimed_until = NULL"
                    " WHERE embedding IS NOT NULL"
                    " AND EXISTS (SELECT 1 FROM meta WHERE key = 'embedding_model' AND value <> $1)",
                    model,
                )
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ('embedding_model', $1)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                model,
            )

    def listen(self, listener: ChangeListener) -> None:
        """Start this process's LISTEN connection; ``listener`` runs on the event loop."""
        if self._feed_task is not None:
            raise RuntimeError("listen() was called twice on one store")
        self._feed = ChangeFeed(lambda: self.connect("listener"), self.token, listener, self.location)
        self._feed_task = self._supervisor.spawn(TaskName.CHANGE_FEED, self._feed.run, lambda error: None)

    @property
    def feed(self) -> ChangeFeed | None:
        return self._feed

    def stats(self) -> dict[str, int]:
        w = self._writer
        if w is None:
            return {
                "commit_queue": 0, "batches": 0, "units": 0, "largest_batch": 0, "conflicts": 0, "retries": 0,
            }  # fmt: skip
        return {
            "commit_queue": w.queue_depth,
            "batches": w.batches,
            "units": w.units,
            "largest_batch": w.largest_batch,
            "conflicts": w.conflicts,
            "retries": w.retries,
        }

    # -- reading -----------------------------------------------------------------------------

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise SystemClosedError(f"the database {self.location} is not open")
        return self._pool

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        pinned = _PINNED.get()
        try:
            if pinned is not None and pinned[0] is self:
                async with pinned[2]:  # one statement at a time on the pinned connection
                    return list(await pinned[1].fetch(sql, *args))
            pool = self._require_pool()
            # A pooled connection that died (a server restart) is replaced by the pool, and a
            # read is safe to send again: at most once per connection the pool may hold.
            for _ in range(self._pool_size):
                try:
                    return list(await pool.fetch(sql, *args))
                except _CONNECTION_LOST:
                    continue
            return list(await pool.fetch(sql, *args))
        except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError) as exc:
            raise StorageError(f"could not read {self.location}: {exc}") from exc

    @asynccontextmanager
    async def consistent_reads(self) -> AsyncIterator[None]:
        """The reads inside run in one read-only REPEATABLE READ transaction: one snapshot."""
        pool = self._require_pool()
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            token = _PINNED.set((self, conn, asyncio.Lock()))
            try:
                yield
            finally:
                _PINNED.reset(token)

    def _memories(self, rows: Iterable[asyncpg.Record]) -> list[Memory]:
        return [memory_from_row(r, self.path) for r in rows]

    async def load_contexts(self) -> list[tuple[str, bytes]]:
        rows = await self._fetch('SELECT user_id, data FROM contexts ORDER BY user_id COLLATE "C"')
        return [(r[0], r[1].encode()) for r in rows]

    async def context_data(self, user_id: str) -> bytes | None:
        rows = await self._fetch("SELECT data FROM contexts WHERE user_id = $1", user_id)
        return rows[0][0].encode() if rows else None

    async def context_versions(self, user_ids: Sequence[str]) -> dict[str, int]:
        if not user_ids:
            return {}
        rows = await self._fetch(
            "SELECT user_id, version FROM contexts WHERE user_id = ANY($1::text[])", list(user_ids)
        )
        return {r[0]: int(r[1]) for r in rows}

    async def stored_version(self, user_id: str) -> int:
        rows = await self._fetch(
            "SELECT greatest(coalesce((SELECT version FROM contexts WHERE user_id = $1), 0),"
            " coalesce((SELECT max(version) FROM context_history WHERE user_id = $1), 0))",
            user_id,
        )
        return int(rows[0][0])

    async def history(self, user_id: str) -> list[HistoryEntry]:
        rows = await self._fetch(f"{HISTORY_SELECT} WHERE user_id = $1 ORDER BY version", user_id)
        return [history_entry(r, self.path) for r in rows]

    async def history_entry(self, user_id: str, version: int) -> HistoryEntry | None:
        rows = await self._fetch(f"{HISTORY_SELECT} WHERE user_id = $1 AND version = $2", user_id, version)
        return history_entry(rows[0], self.path) if rows else None

    async def history_since(self, user_id: str, at: datetime | None) -> list[HistoryEntry]:
        if at is None:
            return await self.history(user_id)
        rows = await self._fetch(
            f"{HISTORY_SELECT} WHERE user_id = $1 AND at >= $2 ORDER BY version", user_id, at
        )
        return [history_entry(r, self.path) for r in rows]

    async def users_with_history_before(self, cutoff: datetime) -> list[str]:
        rows = await self._fetch(
            'SELECT DISTINCT user_id COLLATE "C" FROM context_history WHERE at < $1 ORDER BY 1', cutoff
        )
        return [r[0] for r in rows]

    async def version_count(self, user_id: str) -> int:
        rows = await self._fetch("SELECT count(*) FROM context_history WHERE user_id = $1", user_id)
        return int(rows[0][0])

    async def erasures(self, user_id: str | None = None) -> list[ErasureRecord]:
        sql = "SELECT user_id, at, actor, request, rows FROM erasures"
        args: tuple[Any, ...] = ()
        if user_id is not None:
            sql += " WHERE user_id = $1"
            args = (user_id,)
        rows = await self._fetch(sql + " ORDER BY id", *args)
        return [ErasureRecord(r[0], r[1], r[2], r[3], int(r[4])) for r in rows]

    async def memories(
        self,
        user_id: str,
        *,
        limit: int = -1,
        offset: int = 0,
        kinds: Iterable[str] | None = None,
        scopes: Iterable[str] | None = None,
    ) -> list[Memory]:
        sql = f"SELECT {MEMORY_COLUMNS} FROM memories WHERE user_id = $1"
        args: list[Any] = [user_id]
        if kinds is not None:
            args.append(list(kinds))
            sql += f" AND kind = ANY(${len(args)}::text[])"
        if scopes is not None:
            args.append(sorted(scopes))
            sql += f" AND scope = ANY(${len(args)}::text[])"
        args += [None if limit < 0 else limit, offset]
        sql += f" ORDER BY id LIMIT ${len(args) - 1} OFFSET ${len(args)}"
        return self._memories(await self._fetch(sql, *args))

    async def memories_by_id(self, ids: Sequence[int]) -> dict[int, Memory]:
        if not ids:
            return {}
        rows = await self._fetch(
            f"SELECT {MEMORY_COLUMNS} FROM memories WHERE id = ANY($1::bigint[])", list(ids)
        )
        return {m.id: m for m in self._memories(rows)}

    async def memories_by_source(self, source_id: str) -> list[Memory]:
        rows = await self._fetch(
            f"SELECT {MEMORY_COLUMNS} FROM memories WHERE source_id = $1 ORDER BY id", source_id
        )
        return self._memories(rows)

    async def memories_in_scope(self, scope: str, user_id: str | None = None) -> list[Memory]:
        sql = f"SELECT {MEMORY_COLUMNS} FROM memories WHERE scope = $1"
        args: tuple[Any, ...] = (scope,)
        if user_id is not None:
            sql += " AND user_id = $2"
            args = (scope, user_id)
        return self._memories(await self._fetch(sql + " ORDER BY id", *args))

    async def memories_before(
        self, cutoff: datetime, kinds: Iterable[str], user_id: str | None = None
    ) -> list[Memory]:
        sql = f"SELECT {MEMORY_COLUMNS} FROM memories WHERE created_at < $1 AND kind = ANY($2::text[])"
        args: list[Any] = [cutoff, sorted(kinds)]
        if user_id is not None:
            sql += " AND user_id = $3"
            args.append(user_id)
        return self._memories(await self._fetch(sql + " ORDER BY id", *args))

    async def memory_ids(self, user_id: str) -> list[int]:
        rows = await self._fetch("SELECT id FROM memories WHERE user_id = $1 ORDER BY id", user_id)
        return [r[0] for r in rows]

    async def scoped_ids(self, user_id: str, scopes: Iterable[str]) -> list[int]:
        rows = await self._fetch(
            "SELECT id FROM memories WHERE user_id = $1 AND scope = ANY($2::text[])"
            ' ORDER BY scope COLLATE "C", id',
            user_id,
            sorted(scopes),
        )
        return [r[0] for r in rows]

    async def scopes_of(self, user_id: str) -> list[str]:
        rows = await self._fetch(
            'SELECT DISTINCT scope COLLATE "C" FROM memories WHERE user_id = $1 ORDER BY 1', user_id
        )
        return [r[0] for r in rows]

    async def count_memories(self, user_id: str) -> int:
        rows = await self._fetch("SELECT count(*) FROM memories WHERE user_id = $1", user_id)
        return int(rows[0][0])

    async def memory_counts(self) -> dict[str, int]:
        rows = await self._fetch("SELECT user_id, count(*) FROM memories GROUP BY user_id")
        return {r[0]: int(r[1]) for r in rows}

    async def last_memory(self, user_id: str) -> Memory | None:
        rows = await self._fetch(
            f"SELECT {MEMORY_COLUMNS} FROM memories WHERE user_id = $1 ORDER BY id DESC LIMIT 1", user_id
        )
        return memory_from_row(rows[0], self.path) if rows else None

    async def session_neighbours(self, ids: Iterable[int]) -> dict[int, tuple[int | None, int | None]]:
        id_list = list(ids)
        if not id_list:
            return {}
        rows = await self._fetch(
            "SELECT id, session_prev FROM memories WHERE id = ANY($1::bigint[]) AND session_prev IS NOT NULL"
            " UNION ALL SELECT id, session_prev FROM memories WHERE session_prev = ANY($1::bigint[])",
            id_list,
        )
        links: dict[int, list[int | None]] = {}
        for mid, prev in rows:
            links.setdefault(mid, [None, None])[0] = prev
            links.setdefault(prev, [None, None])[1] = mid
        return {mid: (pair[0], pair[1]) for mid, pair in links.items()}

    async def lexical_search(
        self,
        user_id: str,
        terms: Sequence[str],
        limit: int,
        kinds: Iterable[str] | None = None,
        context_weight: float = 1.0,
        scopes: Iterable[str] | None = None,
    ) -> list[tuple[int, float]]:
        """(memory id, BM25 with the user's own IDF), best first: what SQLite's search returns
        for the same memories (``postgres_lexical.bm25_scores``). One statement reads the
        user's row count, the table's totals and every row of the user holding a term (GIN)."""
        if not terms:
            return []
        stems = query_stems(terms)
        rows = await self._fetch(_LEXICAL_SQL, user_id, tsquery(stems))
        head = next(r for r in rows if r[0] is None)
        user_rows, table_rows, table_tokens = (int(v) for v in head[5:8])
        allowed = None if scopes is None else set(scopes)
        documents = [
            Document(r[0], r[1], allowed is None or r[2] in allowed, r[3], r[4])
            for r in rows
            if r[0] is not None
        ]
        if len(terms) > MAX_QUERY_TERMS:  # SQLite's cut, to rank the same
            hits = [sum(1 for d in documents if s in d.body or s in d.context) for s in stems]
            kept = set(informative_terms(terms, hits))
            stems = [s for t, s in zip(terms, stems, strict=True) if t in kept]
        scores = bm25_scores(stems, documents, user_rows, table_rows, table_tokens, context_weight)
        if kinds is not None:
            wanted = set(kinds)
            kind_of = {d.memory_id: d.kind for d in documents}
            scores = {mid: score for mid, score in scores.items() if kind_of[mid] in wanted}
        return sorted(scores.items(), key=lambda item: (-item[1], -item[0]))[:limit]

    # -- embeddings --------------------------------------------------------------------------

    async def unembedded(self) -> list[Memory]:
        """Claims the rows waiting for a vector for ``claim_lease`` seconds, in a statement of
        its own (no lock is held while Python embeds): rows leased to another process (it wrote
        them, or claimed them) are skipped, and a crashed process's rows are claimed again once
        its lease runs out. Rows leased to this process come back too."""
        rows = await self._fetch(
            "WITH c AS (SELECT id FROM memories WHERE embedding IS NULL"
            " AND (claimed_until IS NULL OR claimed_until < now() OR claimed_by = $3)"
            " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)"
            " UPDATE memories m SET claimed_by = $3, claimed_until = now() + make_interval(secs => $2)"
            f" FROM c WHERE m.id = c.id RETURNING {_qualified('m')}",
            self._claim_limit,
            self._claim_lease,
            self.token,
        )
        return sorted(self._memories(rows), key=lambda m: m.id)

    async def embedding_watermark(self) -> tuple[int, int]:
        rows = await self._fetch(
            "SELECT count(*), coalesce(max(id), 0) FROM memories WHERE embedding IS NOT NULL"
        )
        return int(rows[0][0]), int(rows[0][1])

    async def embedded_ids(self) -> list[tuple[int, str]]:
        rows = await self._fetch("SELECT id, user_id FROM memories WHERE embedding IS NOT NULL ORDER BY id")
        return [(r[0], r[1]) for r in rows]

    async def embeddings_for(self, ids: Sequence[int]) -> list[tuple[int, str, bytes]]:
        if not ids:
            return []
        rows = await self._fetch(
            "SELECT id, user_id, embedding FROM memories WHERE embedding IS NOT NULL"
            " AND id = ANY($1::bigint[]) ORDER BY id",
            list(ids),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def dense_search(
        self, user_id: str, vector: bytes, limit: int, scopes: Iterable[str] | None = None
    ) -> list[tuple[int, float]]:
        """An exact scan of the user's rows (btree (user_id, id)). The vectors are L2-normalised,
        so the inner product (pgvector's ``<#>`` is its negative) is the cosine similarity,
        as FAISS scores it for SQLite."""
        sql = "SELECT id, -(embedding <#> $2) FROM memories WHERE user_id = $1 AND embedding IS NOT NULL"
        args: list[Any] = [user_id, vector]
        if scopes is not None:
            sql += " AND scope = ANY($4::text[])"
        sql += " ORDER BY embedding <#> $2, id LIMIT $3"
        args.append(limit)
        if scopes is not None:
            args.append(sorted(scopes))
        rows = await self._fetch(sql, *args)
        return [(r[0], float(r[1])) for r in rows]

    async def embedded_state(self, user_id: str) -> tuple[int, int]:
        """(how many of the user's memories have a vector, the highest such id): what a cached
        copy of the user's vectors is checked against (one index-only count)."""
        rows = await self._fetch(
            "SELECT count(*), coalesce(max(id), 0) FROM memories"
            " WHERE user_id = $1 AND embedding IS NOT NULL",
            user_id,
        )
        return int(rows[0][0]), int(rows[0][1])

    async def dense_scores(self, user_id: str, vector: bytes, ids: Sequence[int]) -> dict[int, float]:
        if not ids:
            return {}
        rows = await self._fetch(
            "SELECT id, -(embedding <#> $2) FROM memories WHERE user_id = $1 AND id = ANY($3::bigint[])"
            " AND embedding IS NOT NULL",
            user_id,
            vector,
            list(ids),
        )
        return {r[0]: float(r[1]) for r in rows}

    # -- the database itself -------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        rows = await self._fetch("SELECT value FROM meta WHERE key = $1", key)
        return str(rows[0][0]) if rows else None

    async def database_id(self) -> str:
        value = await self.get_meta("database_id")
        if value is None:
            raise StorageError(f"database {self.location} has no database id; open it writable once")
        return value

    async def schema_version(self) -> int:
        rows = await self._fetch("SELECT coalesce(max(version), 0) FROM schema_version")
        return int(rows[0][0])

    async def count(self, table: str) -> int:
        if table not in ("contexts", "context_history", "memories"):
            raise ValueError(table)
        rows = await self._fetch(f"SELECT count(*) FROM {table}")
        return int(rows[0][0])

    async def lexical_rows(self) -> tuple[int, int]:
        """(lexical documents, orphans): the document is part of the memory row, never orphaned."""
        return await self.count("memories"), 0

    async def integrity_problems(self) -> list[str]:
        """The invariants the store keeps itself: the lexical totals add up to the rows, and no
        placeholder context (version 0, only ever inside a writer's transaction) is left."""
        rows = await self._fetch(
            "SELECT (SELECT count(*) FROM memories), (SELECT coalesce(sum(doc_len), 0) FROM memories),"
            " (SELECT coalesce(sum(rows), 0) FROM lexical_totals),"
            " (SELECT coalesce(sum(tokens), 0) FROM lexical_totals),"
            " (SELECT count(*) FROM contexts WHERE version <= 0)"
        )
        count, tokens, total_rows, total_tokens, placeholders = (int(v) for v in rows[0])
        problems = []
        if (count, tokens) != (total_rows, total_tokens):
            problems.append(
                f"lexical totals say {total_rows} rows / {total_tokens} terms, the table holds "
                f"{count} / {tokens}"
            )
        if placeholders:
            problems.append(f"{placeholders} contexts at version 0")
        return problems or ["ok"]


def _qualified(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in MEMORY_COLUMNS.split(","))


# The head row: the user's row count and the table's totals; then one row per document.
_LEXICAL_SQL = (
    "SELECT NULL::bigint, NULL::text, NULL::text, NULL::text[], NULL::text[],"
    " (SELECT count(*) FROM memories WHERE user_id = $1),"
    " (SELECT coalesce(sum(rows), 0) FROM lexical_totals),"
    " (SELECT coalesce(sum(tokens), 0) FROM lexical_totals)"
    " UNION ALL SELECT id, kind, scope, body_terms, context_terms, NULL, NULL, NULL"
    " FROM memories WHERE user_id = $1 AND terms @@ $2::tsquery"
)
