"""Crash-safe file replacement: write a temp file beside the target, fsync, rename, fsync the folder.

A writer killed mid-write leaves its temp file behind (``.<name>.<pid>.tmp``: the pid says whose
it is), so ``remove_dead_temps`` clears those of writers that are gone when a folder is opened.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)\.tmp")

log = logging.getLogger(__name__)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    """Where this process writes the next version of ``path`` before renaming it into place."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: Path, data: bytes) -> None:
    """Leave either the old file or the whole new one at ``path``, never a part."""
    tmp = temp_path(path)
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        fsync_dir(path.parent)
    finally:
        discard_temp(tmp)


def discard_temp(tmp: Path) -> None:
    """Remove what a write left at its temp path. A failure to remove it (say a folder stands
    there) is logged, not raised: the write's own error is the one the caller needs."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove the temp file %s (%s); remove it by hand", tmp, exc)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def remove_dead_temps(folder: Path, names: Iterable[str], *, include_own: bool = False) -> list[Path]:
    """Delete the temp files of ``names`` (see ``temp_path``) whose writer is no longer alive.

    ``include_own`` also takes this process's pid as dead: right for the folder's owner before
    its first write, since a pid can be reused (a container's bot is often pid 1 on every run).
    """
    wanted = set(names)
    removed = []
    for entry in folder.iterdir():
        match = _TEMP.fullmatch(entry.name)
        if match is None or match["name"] not in wanted or not entry.is_file():
            continue
        pid = int(match["pid"])
        if not 0 < pid < 2**31:
            continue  # no process of ours wrote it
        if pid_alive(pid) and not (include_own and pid == os.getpid()):
            continue
        entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
