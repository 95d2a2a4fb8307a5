"""One owner per data folder: an exclusive ``flock`` on ``<data>/memory-bot.lock``.

flock locks belong to an open file, so a second owner is refused whether it is another
process or another MemorySystem in this one, and the kernel drops the lock when its holder
dies, even by kill -9: no stale lock to clean up.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from memory.errors import DataDirLockedError, StorageError

LOCK_NAME = "memory-bot.lock"


def holder_pid(lock_path: Path) -> int | None:
    """The pid written by the owner, or None if the folder is not owned right now."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):  # no lock file, or no folder to hold one
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


class FolderOwnership:
    """Held from ``acquire`` to ``release``; refuses at once if someone else holds it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot create the lock file {self.path}: {exc}", self.path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise DataDirLockedError(self.path, pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
