from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from memory import DataDirLockedError, MemorySystem
from memory.ownership import LOCK_NAME, FolderOwnership, holder_pid
from tests.conftest import PYTHON, ROOT, subprocess_env

HOLDER = """
import asyncio, sys
from memory import MemorySystem
async def main():
    async with MemorySystem(sys.argv[1]):
        print("holding", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
asyncio.run(main())
"""


def start_holder(data_dir: Path) -> subprocess.Popen[str]:
    """A process that owns ``data_dir`` until its stdin gets a line."""
    return subprocess.Popen(
        [PYTHON, "-c", HOLDER, str(data_dir)],
        cwd=ROOT,
        env=subprocess_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


async def test_second_start_in_this_process_fails_naming_the_pid(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    async with make_system():
        second = make_system()
        with pytest.raises(DataDirLockedError) as info:
            await second.start()
        assert info.value.pid == os.getpid()
        assert f"process {os.getpid()}" in str(info.value)
        assert holder_pid(tmp_path / "data" / LOCK_NAME) == os.getpid()
    assert holder_pid(tmp_path / "data" / LOCK_NAME) is None
    async with make_system() as again:  # free once the first is closed
        assert await again.list_users() == []


async def test_start_fails_while_another_process_owns_the_folder(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    data_dir = tmp_path / "data"
    with start_holder(data_dir) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "holding"
        with pytest.raises(DataDirLockedError, match=f"process {proc.pid}") as info:
            await make_system(data_dir).start()
        assert info.value.pid == proc.pid
        proc.stdin.write("done\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    async with make_system(data_dir) as ms:
        assert ms.report is not None


def test_lock_of_a_killed_owner_is_free(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with start_holder(data_dir) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "holding"
        assert holder_pid(data_dir / LOCK_NAME) == proc.pid
        proc.kill()
        proc.wait()
    assert holder_pid(data_dir / LOCK_NAME) is None
    ownership = FolderOwnership(data_dir)
    ownership.acquire()  # the kernel dropped the killed owner's lock: a new owner takes it at once
    try:
        assert holder_pid(data_dir / LOCK_NAME) == os.getpid()
    finally:
        ownership.release()
