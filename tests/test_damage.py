"""Damage is called damage, and nothing else is: corruption vs a read-only folder or a lock."""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from memory import DataDamagedError, MemorySystem, StorageError
from memory.inspector import Inspector
from memory.recovery import DB_NAME
from memory.storage.sqlite import SqliteStore
from memory.storage.sqlite_connection import sqlite3
from memory.storage.sqlite_errors import database_error
from tests.admin_fixtures import Cli, hashing_settings, subprocess_env
from tests.file_faults import read_only_folder, run_on_read_only_mount


def _raised(action: Callable[[], object]) -> sqlite3.Error:
    try:
        action()
    except sqlite3.Error as exc:
        return exc
    raise AssertionError("SQLite raised nothing")


def _table_db(path: Path) -> Path:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (x TEXT)")
        conn.executemany("INSERT INTO t VALUES (?)", [("x" * 200,)] * 2000)
        conn.commit()
    return path


def _assert_not_called_damaged(error: StorageError) -> None:
    message = str(error)
    assert not isinstance(error, DataDamagedError)
    assert "nothing is damaged" in message
    assert "damaged" not in message.replace("nothing is damaged", "")
    assert "move" not in message and "backup" not in message and ".recover" not in message


def test_corruption_codes_are_called_damage(tmp_path: Path) -> None:
    not_a_db = tmp_path / "garbage.db"
    not_a_db.write_bytes(b"this is not a database at all " * 200)
    malformed = _table_db(tmp_path / "malformed.db")
    raw = bytearray(malformed.read_bytes())
    raw[4096 * 2 : 4096 * 3] = b"\xff" * 4096  # one b-tree page of table t
    malformed.write_bytes(bytes(raw))
    for path, name in ((not_a_db, "SQLITE_NOTADB"), (malformed, "SQLITE_CORRUPT")):
        with closing(sqlite3.connect(path)) as conn:

            def read_all(conn: sqlite3.Connection = conn) -> object:
                return conn.execute("SELECT count(*), max(length(x)) FROM t").fetchall()

            exc = _raised(read_all)
        assert exc.sqlite_errorname == name
        error = database_error(path, exc)
        assert isinstance(error, DataDamagedError)
        assert f"database {path} is damaged" in str(error) and error.path == path


def test_read_only_cannot_open_and_locked_are_named_as_such(tmp_path: Path) -> None:
    db = _table_db(tmp_path / "sound.db")
    with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as ro:
        readonly = _raised(lambda: ro.execute("INSERT INTO t VALUES ('y')"))
    cantopen = _raised(lambda: sqlite3.connect(f"{(tmp_path / 'absent.db').as_uri()}?mode=ro", uri=True))
    with closing(sqlite3.connect(db, isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        with closing(sqlite3.connect(db, timeout=0)) as other:
            busy = _raised(lambda: other.execute("INSERT INTO t VALUES ('z')"))
        holder.execute("ROLLBACK")
    assert [e.sqlite_errorname for e in (readonly, cantopen, busy)] == [
        "SQLITE_READONLY",
        "SQLITE_CANTOPEN",
        "SQLITE_BUSY",
    ]
    for exc in (readonly, cantopen):
        error = database_error(db, exc)
        _assert_not_called_damaged(error)
        assert "cannot be opened or written" in str(error)
    locked = database_error(db, busy)
    _assert_not_called_damaged(locked)
    assert "is locked by another connection" in str(locked)


async def _populate(make_system: Callable[..., MemorySystem], data_dir: Path) -> None:
    async with make_system(data_dir) as ms:
        await ms.update_context("alice", "I love pizza", "Noted", display_name="Alice")
        await ms.update_context("bob", "hello", "hi", display_name="Bob")


async def test_start_in_a_read_only_folder_names_the_folder_not_damage(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    data_dir = tmp_path / "data"
    await _populate(make_system, data_dir)
    db = data_dir / DB_NAME
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    with read_only_folder(data_dir), pytest.raises(StorageError) as info:
        await make_system(data_dir).start()
    error = info.value
    _assert_not_called_damaged(error)
    assert f"the folder {data_dir} is not writable" in str(error)
    assert error.path == db
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    async with make_system(data_dir) as ms:  # writable again: everything is still there
        assert sorted(await ms.list_users()) == ["alice", "bob"]


def test_admin_reads_a_read_only_folder(cli: Cli, folder: Path) -> None:
    files = sorted(p.name for p in folder.iterdir())
    with read_only_folder(folder):
        assert cli("users") == 0, cli.err
        assert "alice" in cli.out and "bob" in cli.out
        assert cli("history", "alice") == 0, cli.err
        assert cli("stats") == 0, cli.err
        assert "damaged" not in cli.err
    assert sorted(p.name for p in folder.iterdir()) == files


async def test_inspector_reads_a_read_only_copy_of_a_healthy_folder(folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    with read_only_folder(copy):
        async with Inspector(copy, hashing_settings()) as view:
            assert isinstance(view.store, SqliteStore) and view.store.immutable
            assert [row.user_id for row in await view.users()] == ["alice", "bob", "carol"]
            shown = await view.show("alice")
            assert shown.context is not None and shown.context.preferences["food"] == "pizza"
            assert [check.status for check in await view.verify() if check.name == "database"] == ["ok"]


async def test_read_only_folder_with_changes_in_its_wal_is_not_read_as_immutable(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    """Reading as immutable would silently miss what the WAL holds: refused, and named."""
    data_dir = tmp_path / "data"
    await _populate(make_system, data_dir)
    db = data_dir / DB_NAME
    with closing(sqlite3.connect(db)) as conn:  # leave a committed change in the WAL only
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("UPDATE contexts SET version = version + 1 WHERE user_id = 'bob'")
        conn.commit()
        wal = db.with_name(DB_NAME + "-wal")
        copy = tmp_path / "copy"
        copy.mkdir()
        shutil.copy(db, copy / DB_NAME)
        shutil.copy(wal, copy / wal.name)
    assert (copy / wal.name).stat().st_size > 0
    with read_only_folder(copy), pytest.raises(StorageError) as info:
        await Inspector(copy, hashing_settings()).open()
    _assert_not_called_damaged(info.value)
    assert f"the folder {copy} is not writable" in str(info.value)
    assert "copy the folder somewhere writable" in str(info.value)


START = """
import asyncio, sys
from memory import HashingEncoder, MemorySystem, StorageError, load_settings

async def main() -> None:
    settings = load_settings(environ={}, overrides={"encoder": {"kind": "hashing"}})
    async with MemorySystem(sys.argv[1], settings=settings, encoder=HashingEncoder()):
        pass

try:
    asyncio.run(main())
except StorageError as exc:
    print(type(exc).__name__, exc)
    sys.exit(3)
"""


def test_a_read_only_mount_is_read_by_admin_and_named_at_start(folder: Path, tmp_path: Path) -> None:
    mount = tmp_path / "mounted"
    env = subprocess_env()
    listed = run_on_read_only_mount(
        folder, mount, [sys.executable, "-m", "memory.admin", "--data-dir", str(mount), "users"], env
    )
    assert listed.startswith("exit 0\n") and "alice" in listed and "carol" in listed, listed
    started = run_on_read_only_mount(folder, mount, [sys.executable, "-c", START, str(mount)], env)
    assert started.startswith("exit 3\n"), started
    assert "Read-only file system" in started and "damaged" not in started, started
