"""SQLite's errors named for what they are: only corruption is called damage."""

from __future__ import annotations

import os
from pathlib import Path

from memory.errors import DataDamagedError, StorageError
from memory.storage.sqlite_connection import sqlite3


def damaged_database(path: Path, cause: object, snapshot: Path | None = None) -> DataDamagedError:
    """Only for corruption (see ``database_error``): this advice gives up the file."""
    restore = (
        f"the contexts can be rebuilt from the snapshot {snapshot}: stop the bot, move {path} "
        f"and its -wal and -shm files aside, and start again"
        if snapshot is not None
        else "restore it from a backup"
    )
    return DataDamagedError(
        f"database {path} is damaged ({cause}); {restore}. Memories live only in the database: "
        "keep the damaged file, `sqlite3 FILE .recover` may save them",
        path,
    )


# Primary result codes (the low byte of an extended one) that mean the file itself is corrupt.
_CORRUPTION = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_NO_ACCESS = frozenset({sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM})
_LOCKED = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def primary_code(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code of ``exc`` (Python 3.11+ attaches it), None if it has none."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def access_problem(path: Path) -> str | None:
    """Why this process cannot write the database's folder or files, if it cannot."""
    folder = path.parent
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return f"the folder {folder} is on a read-only filesystem"
    except OSError as exc:
        return f"the folder {folder} cannot be read ({exc.strerror or exc})"
    if not os.access(folder, os.W_OK | os.X_OK):
        return (
            f"the folder {folder} is not writable by this user (SQLite creates {path.name}-wal "
            f"and {path.name}-shm beside the database)"
        )
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if file.exists() and not os.access(file, os.R_OK | os.W_OK):
            return f"{file} is not readable and writable by this user"
    return None


def database_error(path: Path, exc: sqlite3.Error, snapshot: Path | None = None) -> StorageError:
    """What went wrong with ``path``, named for what it is: only corruption is called damage."""
    code = primary_code(exc)
    if code in _CORRUPTION:
        return damaged_database(path, exc, snapshot)
    nothing_lost = "nothing is damaged"
    if code in _NO_ACCESS:
        why = access_problem(path)
        fix = "Make the folder and its files writable by the bot's user"
        if why is not None and not _wal_readable_as_is(path):
            fix += (
                f", or copy the folder somewhere writable to read it: {path.name}-wal holds changes "
                f"that SQLite reads only through a {path.name}-shm file it must create"
            )
        else:
            fix += " (memory-admin's read commands read a read-only folder as it is)"
        return StorageError(
            f"database {path} cannot be opened or written ({exc}): "
            f"{why or 'the file or its folder is read-only or not accessible'}; {nothing_lost}. {fix}",
            path,
        )
    if code in _LOCKED:
        return StorageError(
            f"database {path} is locked by another connection ({exc}); {nothing_lost}. Wait for "
            "it or stop the other process, then try again",
            path,
        )
    if code == sqlite3.SQLITE_FULL:
        return StorageError(f"database {path}: the disk is full ({exc}); free space, then retry", path)
    if code == sqlite3.SQLITE_IOERR:
        return StorageError(
            f"database {path}: the operating system reported an I/O error ({exc}); check the disk "
            "and the filesystem, then retry",
            path,
        )
    return StorageError(f"could not use the database {path}: {exc}", path)


def _wal_readable_as_is(path: Path) -> bool:
    """Whether the database may be read as an immutable file: nothing waits in its WAL."""
    wal = path.with_name(path.name + "-wal")
    try:
        return wal.stat().st_size == 0
    except FileNotFoundError:
        return True
