"""The store: forward migrations and group commit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from memory import StorageError
from memory.lexical import user_terms
from memory.storage.sqlite import SqliteStore
from memory.storage.sqlite_connection import sqlite3
from memory.storage.sqlite_schema import MIGRATIONS, SCHEMA_VERSION, migrate, owner_token


def make_v1_database(path: Path, user_id: str, text: str, created_at: str) -> None:
    """A database at schema version 1 holding one note (id 7), as an old install left it."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TEXT NOT NULL)")
        MIGRATIONS[0](db)
        db.execute("INSERT INTO schema_version VALUES (1, 'then')")
        db.execute(
            "INSERT INTO memories (id, user_id, text, kind, created_at) VALUES (7, ?, ?, 'note', ?)",
            (user_id, text, created_at),
        )


def test_migrations_bring_an_old_database_forward(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    make_v1_database(path, "alice", "kept words", "x")
    with sqlite3.connect(path, isolation_level=None) as db:
        assert migrate(db, path) == list(range(2, SCHEMA_VERSION + 1))
        assert migrate(db, path) == []
        hits = db.execute(
            "SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?", (user_terms("alice", "kept"),)
        ).fetchall()
        assert hits == [(7,)]  # carried through v2 (shared words) into v3 (the user's own terms)
        shared_word = db.execute("SELECT count(*) FROM memories_fts WHERE memories_fts MATCH 'kept'")
        assert shared_word.fetchone() == (0,)


def test_owner_tokens_are_distinct_for_ids_a_tokenizer_would_merge() -> None:
    ids = ["alice bob", "alice_bob", "alice-bob", "Alice bob", "aliceé", "alicee"]
    assert len({owner_token(i) for i in ids}) == len(ids)
    assert all(owner_token(i)[1:].isdigit() for i in ids)


async def test_concurrent_units_are_committed_in_groups(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "m.db")
    await store.open()
    try:
        statements = [
            [("INSERT INTO contexts (user_id, version, data) VALUES (?, 1, '{}')", (f"u{i}",))]
            for i in range(300)
        ]
        await asyncio.gather(*(store.commit(s) for s in statements))
        stats = store.stats()
        assert stats["units"] == 300
        assert stats["batches"] < 300 and stats["largest_batch"] > 1
        assert await store.count("contexts") == 300
    finally:
        await store.close()
        await store.close()


async def test_a_failing_unit_fails_alone(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "m.db")
    await store.open()
    try:
        good = [
            ("INSERT INTO contexts (user_id, version, data) VALUES (?, 1, '{}')", (f"u{i}",))
            for i in range(5)
        ]
        bad = [
            ("INSERT INTO contexts (user_id, version, data) VALUES ('x', 1, '{}')", ()),
            ("INSERT INTO contexts (user_id, version, data) VALUES ('x', 1, '{}')", ()),  # duplicate key
        ]
        results = await asyncio.gather(
            *(store.commit([g]) for g in good[:3]),
            store.commit(bad),
            *(store.commit([g]) for g in good[3:]),
            return_exceptions=True,
        )
        assert [type(r).__name__ for r in results] == ["NoneType"] * 3 + ["StorageError"] + ["NoneType"] * 2
        assert isinstance(results[3], StorageError) and "UNIQUE" in str(results[3])
        rows = await store.fetch("SELECT user_id FROM contexts ORDER BY user_id")
        assert [r[0] for r in rows] == ["u0", "u1", "u2", "u3", "u4"]  # nothing of the bad unit
    finally:
        await store.close()


async def test_read_only_store_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    writable = SqliteStore(path)
    await writable.open()
    await writable.close()
    readonly = SqliteStore(path, readonly=True)
    await readonly.open()
    try:
        with pytest.raises(StorageError, match=r"readonly|read-only"):
            await readonly.fetch("INSERT INTO contexts VALUES ('x', 1, '{}')")
    finally:
        await readonly.close()
