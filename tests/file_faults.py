"""Real faults in real files: a read-only folder even root cannot write, and one flipped bit."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from memory.storage.sqlite_connection import sqlite3


@contextmanager
def read_only_folder(folder: Path) -> Iterator[None]:
    """``chattr +i`` on ``folder``: nobody, root included, can create or delete files in it.

    Tests run as root, for whom mode 555 stops nothing; an immutable folder behaves as one on a
    read-only mount does for SQLite (it cannot create the -wal and -shm files).
    """
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"this filesystem has no immutable flag: {made.stderr.strip()}")
    try:
        probe = folder / ".write-probe"
        try:
            probe.touch()
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("an immutable folder is still writable here")
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def flip_bit_in_table(db: Path, table: str, marker: bytes, bit: int = 0x01) -> int:
    """Flip ``bit`` of the first byte of ``marker`` where it first appears on one of ``table``'s
    pages in the closed database ``db`` (bit rot); returns the file offset."""
    with closing(sqlite3.connect(db)) as conn:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        pages = [
            int(row[0])
            for row in conn.execute("SELECT pageno FROM dbstat WHERE name = ? ORDER BY pageno", (table,))
        ]
    assert not db.with_name(db.name + "-wal").exists(), "the database must be closed and checkpointed"
    raw = bytearray(db.read_bytes())
    for page in pages:
        start = (page - 1) * page_size
        at = raw.find(marker, start, start + page_size)
        if at >= 0:
            raw[at] ^= bit
            db.write_bytes(bytes(raw))
            return at
    raise AssertionError(f"{marker!r} is on no page of {table} in {db}")


def run_on_read_only_mount(source: Path, mount_point: Path, argv: list[str], env: dict[str, str]) -> str:
    """Run ``argv`` in a private mount namespace in which ``mount_point`` is ``source`` mounted
    read-only (a bind mount); returns its stdout and stderr. Nothing outside the child sees it."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    mount_point.mkdir(exist_ok=True)
    script = 'mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && shift 2 && exec "$@"'
    unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    done = subprocess.run(
        [*unshare, str(source), str(mount_point), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if "mount:" in done.stderr or "unshare:" in done.stderr:
        pytest.skip(f"cannot make a read-only mount here: {done.stderr.strip()}")
    return f"exit {done.returncode}\n{done.stdout}{done.stderr}"


def break_page_of_tree(db: Path, tree: str) -> int:
    """Zero the page-type byte of a leaf page in the middle of ``tree`` (a table or an index) in
    the closed database ``db`` (a torn or misdirected write): that b-tree is malformed there,
    which ``quick_check`` finds, while reads that do not use it still work. Returns the page."""
    with closing(sqlite3.connect(db)) as conn:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        leaves = [
            int(row[0])
            for row in conn.execute(
                "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno", (tree,)
            )
        ]
    assert len(leaves) >= 3, f"{tree} in {db} needs a few leaf pages"
    assert not db.with_name(db.name + "-wal").exists(), "the database must be closed and checkpointed"
    page = leaves[len(leaves) // 2]
    raw = bytearray(db.read_bytes())
    raw[(page - 1) * page_size] = 0x00  # not a b-tree page type
    db.write_bytes(bytes(raw))
    return page
