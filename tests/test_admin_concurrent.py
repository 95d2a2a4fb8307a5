"""memory-admin beside a running owner: another process writes while the CLI reads.

The writer prints how many updates were acknowledged after each one; the test waits on those
lines (never on time), so "acknowledged N" means N updates had committed before a read began.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.admin_fixtures import HASHING_CONFIG, REPO, Cli, build_folder, subprocess_env


class Writer:
    """The writer process of tests/admin_fixtures.py, owning ``data_dir`` until stopped."""

    def __init__(self, data_dir: Path, work: Path, also: Sequence[str] = ()) -> None:
        self.stop_file = work / "stop-writer"
        self.log = work / "writer.err"
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.admin_fixtures",
                    "writer",
                    str(data_dir),
                    str(self.stop_file),
                    *also,
                ],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=subprocess_env(),
                cwd=REPO,
            )
        self.acknowledged = 0

    def wait_for(self, at_least: int) -> int:
        """Block until the writer has acknowledged ``at_least`` updates; returns the count."""
        assert self.proc.stdout is not None
        while self.acknowledged < at_least:
            line = self.proc.stdout.readline()
            assert line, f"the writer stopped early: {self.log.read_text()}"
            self.acknowledged = int(line)
        return self.acknowledged

    def stop(self) -> list[str]:
        """Ask the writer to close; returns the lines it printed meanwhile."""
        self.stop_file.touch()
        out, _ = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, self.log.read_text()
        return out.splitlines()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return build_folder(tmp_path / "data")


@pytest.fixture
def cli(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    config = tmp_path / "admin.toml"
    config.write_text(HASHING_CONFIG)
    return Cli(folder, config, capsys)


@pytest.fixture
def writer(folder: Path, tmp_path: Path) -> Iterator[Writer]:
    running = Writer(folder, tmp_path)
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            running.stop_file.touch()
            running.proc.communicate(timeout=120)


def read_json(cli: Cli, *argv: str) -> Any:
    code = cli(*argv, "--json")
    assert code == 0, (argv, cli.err)
    return json.loads(cli.out)


def test_read_commands_see_what_a_running_owner_committed(cli: Cli, writer: Writer) -> None:
    acked = writer.wait_for(3)
    users = {u["user_id"]: u for u in read_json(cli, "users")}
    assert users["live"]["conversations"] >= acked
    assert {"alice", "bob", "carol"} <= users.keys()

    acked = writer.wait_for(acked + 3)  # the owner kept writing while we read
    shown = read_json(cli, "show", "live")
    assert shown["context"]["conversations_count"] >= acked
    assert len(read_json(cli, "history", "live")) >= acked
    assert len(read_json(cli, "memories", "live", "--limit", "100000")) >= acked
    found = read_json(cli, "search", "live", "message number 1")
    assert found and all(r["user_id"] == "live" for r in found)

    stats = read_json(cli, "stats")
    assert stats["owner_pid"] == writer.proc.pid
    assert stats["memories"] >= 6 + acked

    report = read_json(cli, "verify")
    checks = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is True, checks
    assert checks["database"]["status"] == "ok" and checks["lexical"]["status"] == "ok"
    assert report["owner_pid"] == writer.proc.pid

    final = int(writer.stop()[-2])  # the last count, then "closed"
    users = {u["user_id"]: u for u in read_json(cli, "users")}
    assert users["live"]["conversations"] == final
    assert cli("verify") == 0, cli.out  # closed cleanly: snapshot and index caught up


def test_changing_commands_go_through_the_owner(cli: Cli, writer: Writer) -> None:
    acked = writer.wait_for(1)
    assert cli("rollback", "alice", "1", "--yes") == 0, cli.err
    assert read_json(cli, "show", "alice")["context"]["conversations_count"] == 1
    assert cli("rebuild-index", "--yes") == 0, cli.err
    assert cli("forget", "bob", "--yes") == 0, cli.err
    assert cli("show", "bob") == 1
    assert writer.wait_for(acked + 2) >= acked + 2  # the owner is unharmed and keeps writing
    assert cli("forget", "--force", "bob", "--yes") == 2  # gone: nothing bypasses the owner


def test_an_admin_forget_is_not_undone_by_the_owners_next_write(
    folder: Path, tmp_path: Path, cli: Cli
) -> None:
    """alice keeps talking through the owner; the forget sent to it erases all she said before."""
    writer = Writer(folder, tmp_path, also=["alice"])
    try:
        acked = writer.wait_for(2)
        assert cli("forget", "alice", "--yes") == 0, cli.err
        after = writer.wait_for(acked + 3)
        final = int(writer.stop()[-2])
    finally:
        if writer.proc.poll() is None:
            writer.stop_file.touch()
            writer.proc.communicate(timeout=120)
    shown = read_json(cli, "show", "alice")["context"]
    # Only what she said after the forget: the owner did not write her old context back.
    assert shown["conversations_count"] <= final - acked
    assert after > acked and "food" not in shown["preferences"]
    for name in ("memory.db", "memory.db-wal", "contexts.json"):
        path = folder / name
        data = path.read_bytes() if path.exists() else b""
        assert b"Miso" not in data and b"Alps" not in data, name
    erasures = read_json(cli, "erasures", "alice")
    assert [e["request"] for e in erasures] == ["forget_user"] and erasures[0]["actor"] == "admin"
