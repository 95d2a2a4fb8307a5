"""Startup: SQLite is the truth, the snapshot the fallback, never a silent empty start."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from memory import MemorySystem, StorageError
from memory.recovery import DB_NAME, SNAPSHOT_NAME
from memory.snapshot import read_snapshot
from memory.storage.sqlite import SqliteStore
from memory.storage.sqlite_connection import sqlite3


async def _populate(make_system: Callable[..., MemorySystem], data_dir: Path) -> None:
    async with make_system(data_dir) as ms:
        for i in range(5):
            await ms.update_context(f"user-{i}", "hello", "hi")
        await ms.set_preference("user-1", "food", "pizza")


async def test_truncated_snapshot_is_reported_and_rewritten(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    data_dir = tmp_path / "data"
    await _populate(make_system, data_dir)
    snapshot = data_dir / SNAPSHOT_NAME
    snapshot.write_bytes(snapshot.read_bytes()[:-40])
    async with make_system(data_dir) as ms:
        assert ms.report is not None
        assert ms.report.snapshot_problem is not None
        assert "truncated" in ms.report.snapshot_problem
        assert len(await ms.list_users()) == 5
    assert len(read_snapshot(snapshot)) == 5


async def test_deleted_database_is_rebuilt_from_the_snapshot(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    data_dir = tmp_path / "data"
    await _populate(make_system, data_dir)
    for suffix in ("", "-wal", "-shm"):
        (data_dir / (DB_NAME + suffix)).unlink(missing_ok=True)
    async with make_system(data_dir) as ms:
        assert ms.report is not None
        assert ms.report.rebuilt_from_snapshot == 5
        assert any("rebuilt 5 contexts" in note for note in ms.report.notes)
        ctx = await ms.get_user_context("user-1")
        assert (ctx.version, ctx.preferences["food"]) == (2, "pizza")
        history = await ms.history("user-1")
        assert [(h.version, h.actor) for h in history] == [(2, "recovery")]
        assert (await ms.update_context("user-1", "again", "hi")).version == 3
    async with make_system(data_dir) as again:
        assert (await again.get_user_context("user-1")).version == 3


async def test_corrupted_database_stops_start_naming_the_file_and_the_way_back(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    data_dir = tmp_path / "data"
    await _populate(make_system, data_dir)
    db = data_dir / DB_NAME
    raw = bytearray(db.read_bytes())
    raw[0:100] = b"\x13" * 100  # destroy the header
    db.write_bytes(bytes(raw))
    system = make_system(data_dir)
    with pytest.raises(StorageError) as info:
        await system.start()
    message = str(info.value)
    assert str(db) in message
    assert "damaged" in message
    assert SNAPSHOT_NAME in message and "move" in message
    assert info.value.path == db
    # The failed start released the folder: a fixed folder can be opened again at once.
    db.rename(data_dir / "damaged.db")
    async with make_system(data_dir) as ms:
        assert len(await ms.list_users()) == 5


async def test_damaged_pages_inside_the_database_are_caught(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    data_dir = tmp_path / "data"
    async with make_system(data_dir) as ms:
        for i in range(300):
            await ms.save_memory("alice", f"memory number {i} " + "padding " * 40)
    db = data_dir / DB_NAME
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = bytearray(db.read_bytes())
    page = 4096
    for offset in range(page * 3, len(raw) - page, page * 2):
        raw[offset + 8 : offset + 200] = b"\xff" * 192
    db.write_bytes(bytes(raw))
    with pytest.raises(StorageError, match="damaged"):
        await make_system(data_dir).start()


async def test_missing_database_and_damaged_snapshot_refuse_to_start_empty(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    data_dir = tmp_path / "data"
    await _populate(make_system, data_dir)
    (data_dir / DB_NAME).unlink()
    (data_dir / SNAPSHOT_NAME).write_text('{"format": "memory-bot-contexts", "users": [')
    with pytest.raises(StorageError, match="not starting empty"):
        await make_system(data_dir).start()


async def test_database_from_a_newer_program_is_refused(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    data_dir = tmp_path / "data"
    await _populate(make_system, data_dir)
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, 'future')")
    with pytest.raises(StorageError, match="schema version 99"):
        await make_system(data_dir).start()


async def test_a_database_that_fails_to_open_leaves_no_connection_thread(tmp_path: Path) -> None:
    # A connection thread left running keeps the whole process from exiting.
    path = tmp_path / "memory.db"
    path.write_bytes(b"this is not a database" * 100)
    before = {t.ident for t in threading.enumerate()}
    store = SqliteStore(path)
    with pytest.raises(StorageError, match="damaged"):
        await store.open()
    left = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    for thread in left:
        thread.join(timeout=5)
    assert [t.name for t in left if t.is_alive()] == []
