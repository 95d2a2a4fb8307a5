"""SQLite's schema and its migrations, applied in order inside one transaction each."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from pathlib import Path

from memory.context import PRIVATE_SCOPE
from memory.errors import StorageError
from memory.lexical import user_terms
from memory.storage.sqlite_connection import sqlite3

Migration = Callable[[sqlite3.Connection], None]
# FTS5 looks a term up once per index segment: merging whenever 2 segments share a level, and
# a bounded merge step after writes (at most a few ms of the writer), keeps searches at 1-3.
FTS_USERMERGE = 2
# A deleted row stays in FTS5's segments as a tombstone until they are merged; from SQLite 3.44
# the 'secure-delete' option removes it at once, before that only a full merge does.
FTS_SECURE_DELETE = sqlite3.sqlite_version_info >= (3, 44, 0)


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


def _v4_erasure(db: sqlite3.Connection) -> None:
    # The erasure log outlives what it records (no content, only who, when, what, how many),
    # and the database id ties the index file to this database (a copied or rebuilt database
    # gets a new one, so an index made for another is never trusted by its ids).
    _script(
        db,
        """
        CREATE TABLE erasures (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id TEXT NOT NULL,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            request TEXT NOT NULL,
            rows INTEGER NOT NULL
        );
        CREATE INDEX erasures_by_user ON erasures (user_id, id)
        """,
    )
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('database_id', ?)", (uuid.uuid4().hex,))


def _v5_scopes(db: sqlite3.Connection) -> None:
    # Where each memory was said (privacy scopes, issue 11). Rows from before have no known
    # origin: they get the most private scope, 'dm', so they are never shown in a guild and
    # stay usable where everything of the person is (their DMs).
    _script(
        db,
        f"""
        ALTER TABLE memories ADD COLUMN scope TEXT NOT NULL DEFAULT '{PRIVATE_SCOPE}';
        CREATE INDEX memories_by_user_scope ON memories (user_id, scope, id)
        """,
    )


MIGRATIONS: tuple[Migration, ...] = (_v1_core, _v2_fts, _v3_user_terms, _v4_erasure, _v5_scopes)
SCHEMA_VERSION = len(MIGRATIONS)
ERASURE_SCHEMA = 4  # the first schema with the erasure log


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
    if FTS_SECURE_DELETE:
        # A table setting, kept in the file: deletes remove their terms at once from now on
        # (such a table is no longer readable by an SQLite older than 3.44).
        db.execute("INSERT INTO memories_fts (memories_fts, rank) VALUES ('secure-delete', 1)")
        db.commit()
    return applied
