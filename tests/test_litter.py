"""Crashes leave no litter: start removes the temp files of writers that died, and only those."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from memory import MemorySystem
from memory.atomic import temp_path
from memory.recovery import ATOMIC_NAMES, SNAPSHOT_NAME
from tests.conftest import subprocess_env

# A writer that has begun its temp files and is then killed (or kept alive) at the test's word.
WRITER = """
import sys, time
from pathlib import Path
from memory.atomic import temp_path
folder = Path(sys.argv[1])
for name in sys.argv[2:]:
    temp_path(folder / name).write_bytes(b'{"format": "memory-bot-contexts", "users": [')
print("written", flush=True)
time.sleep(120)
"""


def _start_writer(folder: Path, *names: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder), *names],
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "written\n"  # its files are on disk
    return child


@pytest.fixture
def writers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()


async def test_start_removes_the_temp_files_of_dead_writers_only(
    tmp_path: Path, make_system: Callable[..., MemorySystem], writers: list[subprocess.Popen[str]]
) -> None:
    data_dir = tmp_path / "data"
    async with make_system(data_dir) as ms:
        await ms.update_context("alice", "hello", "hi")
    dead = _start_writer(data_dir, *ATOMIC_NAMES)
    writers.append(dead)
    dead.send_signal(signal.SIGKILL)
    assert dead.wait(timeout=30) == -signal.SIGKILL
    alive = _start_writer(data_dir, SNAPSHOT_NAME)
    writers.append(alive)
    litter = [data_dir / f".{name}.{dead.pid}.tmp" for name in ATOMIC_NAMES]
    kept = data_dir / f".{SNAPSHOT_NAME}.{alive.pid}.tmp"
    unrelated = data_dir / f".notes.txt.{dead.pid}.tmp"
    unrelated.write_bytes(b"not ours")
    assert all(path.exists() for path in [*litter, kept])

    async with make_system(data_dir) as ms:
        assert ms.report is not None
        notes = [note for note in ms.report.notes if "temp file" in note]
        assert len(notes) == 1 and f"removed {len(ATOMIC_NAMES)} temp file(s)" in notes[0]
        assert all(path.name in notes[0] for path in litter)
        assert (await ms.get_user_context("alice")).conversations_count == 1
    assert not any(path.exists() for path in litter)
    assert kept.exists(), "a live writer's temp file was removed"
    assert unrelated.read_bytes() == b"not ours"


async def test_a_temp_file_with_the_owners_own_pid_is_an_earlier_process_litter(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    """A container's bot can be pid 1 on every run: its own pid does not keep old litter alive."""
    data_dir = tmp_path / "data"
    async with make_system(data_dir) as ms:
        await ms.update_context("alice", "hello", "hi")
    mine = temp_path(data_dir / SNAPSHOT_NAME)
    assert mine.name == f".{SNAPSHOT_NAME}.{os.getpid()}.tmp"
    mine.write_bytes(b"partial")
    async with make_system(data_dir) as ms:
        assert ms.report is not None and any(mine.name in note for note in ms.report.notes)
    assert not mine.exists()
