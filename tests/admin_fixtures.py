"""Data folders for the admin CLI tests, built and written through the real MemorySystem.

Run as ``python -m tests.admin_fixtures writer DATA_DIR STOP_FILE`` it is the
concurrent writer: it owns the folder, commits one update after another and prints the number
acknowledged so far after each, until STOP_FILE exists; then it closes and prints ``closed``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from memory import MemorySystem, Settings, load_settings
from memory.admin import main

REPO = Path(__file__).resolve().parent.parent
HASHING_CONFIG = '[encoder]\nkind = "hashing"\n'
USERS = ("alice", "bob", "carol")


def hashing_settings() -> Settings:
    """The fast deterministic encoder, whatever the environment says."""
    return load_settings(environ={}, overrides={"encoder": {"kind": "hashing"}})


async def populate(data_dir: Path) -> None:
    """alice: 3 conversations, a preference, a fact; bob: 1 conversation; carol: a note only."""
    async with MemorySystem(data_dir, settings=hashing_settings()) as ms:
        for n, (message, reply) in enumerate(
            [("I love pizza", "Noted!"), ("My cat is called Miso", "Cute"), ("Hi again", "Hello")]
        ):
            await ms.update_context("alice", message, reply, display_name="Alice" if n == 0 else None)
        await ms.set_preference("alice", "food", "pizza")
        await ms.save_memory("alice", "Alice climbs mountains in the Alps", kind="fact")
        await ms.update_context("bob", "Tell me about trains", "Trains are great", display_name="Bob")
        await ms.save_memory("carol", "Carol's birthday is in May", kind="note")
        for uid in USERS:  # a retrieve waits until the user's memories are embedded
            await ms.retrieve_memory(uid, "anything")


def build_folder(data_dir: Path) -> Path:
    asyncio.run(populate(data_dir))
    return data_dir


class Cli:
    """Runs ``memory-admin`` in this process against one folder; captures its output."""

    def __init__(self, data_dir: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.data_dir = data_dir
        self.config = config
        self._capsys = capsys
        self.out = ""
        self.err = ""

    def __call__(self, *argv: str) -> int:
        self._capsys.readouterr()
        code = main(["--data-dir", str(self.data_dir), "--config", str(self.config), *argv])
        self.out, self.err = self._capsys.readouterr()
        return code


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORY_BOT_")}
    env["MEMORY_BOT_ENCODER_KIND"] = "hashing"
    env["PYTHONPATH"] = str(REPO)
    return env


def run_cli(args: Sequence[str], stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    """``python -m memory.admin ARGS`` as a real process (stdin: not a terminal by default)."""
    return subprocess.run(
        [sys.executable, "-m", "memory.admin", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=120,
        stdin=stdin,
        check=False,
    )


async def write_until(data_dir: Path, stop: Path, also: Sequence[str] = ()) -> None:
    """Updates of "live" (and of each user in ``also``) until ``stop`` exists; prints the count."""
    async with MemorySystem(data_dir, settings=hashing_settings()) as ms:
        acknowledged = 0
        while not stop.exists():
            await ms.update_context("live", f"message number {acknowledged}", "ok", display_name="Live")
            for user in also:
                await ms.update_context(user, f"still talking {acknowledged}", "ok")
            acknowledged += 1
            print(acknowledged, flush=True)
    print("closed", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] != ["writer"] or len(sys.argv) < 4:
        sys.exit("usage: python -m tests.admin_fixtures writer DATA_DIR STOP_FILE [ALSO_USER...]")
    asyncio.run(write_until(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return build_folder(tmp_path / "data")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "admin.toml"
    path.write_text(HASHING_CONFIG)
    return path


@pytest.fixture
def cli(folder: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(folder, config, capsys)
