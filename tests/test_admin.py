"""memory-admin's read commands, errors and help, against real data folders."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from memory import MemorySystem
from memory.admin import build_parser, main
from memory.storage.sqlite_connection import sqlite3
from tests.admin_fixtures import (
    Cli,
    hashing_settings,
    run_cli,
)

READ_COMMANDS = [
    ["users"],
    ["show", "alice"],
    ["history", "alice"],
    ["memories", "alice"],
    ["search", "alice", "pizza"],
    ["stats"],
    ["verify"],
]


def assert_one_line_error(cli: Cli, *words: str) -> None:
    assert cli.out == ""
    lines = [line for line in cli.err.splitlines() if "WARNING" not in line]
    assert len(lines) == 1, cli.err
    assert lines[0].startswith("memory-admin: error: ")
    assert "Traceback" not in cli.err
    for word in words:
        assert word in lines[0]


# -- read commands ---------------------------------------------------------------------------


def test_users_lists_every_user_with_counts(cli: Cli) -> None:
    assert cli("users") == 0
    lines = cli.out.splitlines()
    assert lines[0].split() == [
        "user",
        "name",
        "conversations",
        "friendship",
        "memories",
        "version",
        "last",
        "seen",
    ]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"alice", "bob", "carol"}
    assert rows["alice"][1:6] == [
        "Alice",
        "3",
        "2",  # three messages in one conversation: friendship rose once
        "4",
        "4",
    ]  # 3 exchanges + 1 fact; v4 after the preference
    assert rows["carol"][1:4] == ["0", "0", "1"]  # memories only: no context


def test_users_sorts_and_limits(cli: Cli) -> None:
    assert cli("users", "--sort", "memories", "--limit", "2", "--json") == 0
    rows = json.loads(cli.out)
    assert [r["user_id"] for r in rows] == ["alice", "bob"]
    assert cli("users", "--sort", "name", "--json") == 0
    assert [r["user_id"] for r in json.loads(cli.out)] == [
        "carol",
        "alice",
        "bob",
    ]  # "" < Alice < Bob


@pytest.mark.parametrize("argv", [*READ_COMMANDS, ["export", "alice"]], ids=lambda a: a[0])
def test_json_output_parses(cli: Cli, argv: list[str]) -> None:
    extra = [] if argv[0] == "export" else ["--json"]
    assert cli(*argv, *extra) == 0, cli.err
    assert json.loads(cli.out) is not None


def test_show_prints_the_context(cli: Cli) -> None:
    assert cli("show", "alice") == 0
    assert "food=pizza" in cli.out and "My cat is called Miso" in cli.out
    assert cli("show", "alice", "--json") == 0
    shown = json.loads(cli.out)
    assert shown["context"]["conversations_count"] == 3
    assert shown["context"]["preferences"] == {"food": "pizza"}
    assert (shown["versions"], shown["memories"]) == (4, 4)


def test_show_of_a_memory_only_user_says_so(cli: Cli) -> None:
    assert cli("show", "carol", "--json") == 0
    assert json.loads(cli.out) == {
        "user_id": "carol",
        "context": None,
        "versions": 0,
        "memories": 1,
    }


def test_history_lists_versions_with_time_actor_and_change(cli: Cli) -> None:
    assert cli("history", "alice") == 0
    rows = cli.out.splitlines()[2:]
    assert [r.split()[0] for r in rows] == ["1", "2", "3", "4"]
    assert "set_preference" in rows[3] and "pizza" in rows[3] and " api " in rows[3]
    assert cli("history", "alice", "--json") == 0
    entries = json.loads(cli.out)
    assert [e["change"]["op"] for e in entries] == ["update_context"] * 3 + ["set_preference"]
    assert all(e["actor"] == "api" and e["at"] for e in entries)


def test_memories_are_paged(cli: Cli) -> None:
    assert cli("memories", "alice", "--limit", "2", "--offset", "1", "--json") == 0
    page = json.loads(cli.out)
    assert [m["id"] for m in page] == [2, 3]
    assert cli("memories", "alice", "--limit", "2", "--offset", "1") == 0
    assert "memories 2-3 of 4; --offset 3 for more" in cli.out


def test_search_shows_score_and_rankers(cli: Cli) -> None:
    assert cli("search", "alice", "mountains Alps") == 0
    first = cli.out.splitlines()[2]
    assert "Alice climbs mountains" in first and "dense+lexical" in first and "fact" in first


def test_search_ranks_as_the_memory_system_does(cli: Cli, folder: Path) -> None:
    assert cli("search", "alice", "my cat pizza", "-k", "4", "--json") == 0
    got = json.loads(cli.out)

    async def retrieve() -> list[dict[str, Any]]:
        async with MemorySystem(folder, settings=hashing_settings()) as ms:
            return [r.to_dict() for r in await ms.retrieve_memory("alice", "my cat pizza", 4)]

    want = asyncio.run(retrieve())
    assert [(r["id"], r["rankers"]) for r in got] == [(r["id"], r["rankers"]) for r in want]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want])


def test_search_never_returns_another_users_memory(cli: Cli) -> None:
    assert cli("search", "bob", "Alice pizza mountains trains", "--json") == 0
    assert {r["user_id"] for r in json.loads(cli.out)} == {"bob"}


def test_stats_reports_counts_snapshot_index_and_files(cli: Cli) -> None:
    assert cli("stats", "--json") == 0
    stats = json.loads(cli.out)
    assert (stats["users"], stats["memories"], stats["embedded"], stats["pending_embeddings"]) == (
        2,
        6,
        6,
        0,
    )
    assert stats["history_rows"] == 5 and stats["lexical_rows"] == 6
    assert stats["owner_pid"] is None and stats["embedding_model"] == "hashing-384"
    assert stats["snapshot"]["count"] == 2 and stats["index"]["count"] == 6
    assert stats["files"]["memory.db"] > 0 and stats["total_bytes"] >= stats["files"]["memory.db"]
    assert cli("stats") == 0
    assert "memory.db" in cli.out and "KiB" in cli.out


def test_export_is_what_the_memory_system_exports(cli: Cli, folder: Path) -> None:
    assert cli("export", "alice") == 0
    got = json.loads(cli.out)

    async def export() -> dict[str, Any]:
        async with MemorySystem(folder, settings=hashing_settings()) as ms:
            return await ms.export_user("alice")

    want = asyncio.run(export())
    got.pop("exported_at")
    want.pop("exported_at")
    assert got == want


def test_export_to_a_file(cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "alice.json"
    assert cli("export", "alice", "--output", str(target)) == 0
    assert cli.out == "" and "alice" in cli.err
    assert json.loads(target.read_text())["user_id"] == "alice"


def file_digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.iterdir()
        if p.name not in ("memory.db-wal", "memory.db-shm")
    }


def test_read_commands_change_no_file(cli: Cli, folder: Path) -> None:
    before = file_digests(folder)
    for argv in [*READ_COMMANDS, ["export", "alice"], ["users", "--json"]]:
        assert cli(*argv) == 0, (argv, cli.err)
    assert file_digests(folder) == before
    wal = folder / "memory.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0


# -- verify ----------------------------------------------------------------------------------


def test_verify_passes_on_a_healthy_folder(cli: Cli) -> None:
    assert cli("verify") == 0
    assert [line.split()[:2] for line in cli.out.splitlines()[:4]] == [
        ["OK", "database"],
        ["OK", "lexical"],
        ["OK", "snapshot"],
        ["OK", "index"],
    ]
    assert "all 4 checks passed" in cli.out


def verify_json(cli: Cli) -> tuple[int, dict[str, dict[str, str]]]:
    code = cli("verify", "--json")
    report = json.loads(cli.out)
    assert report["ok"] is (code == 0)
    return code, {c["name"]: c for c in report["checks"]}


def test_verify_catches_a_truncated_snapshot(cli: Cli, folder: Path) -> None:
    snapshot = folder / "contexts.json"
    snapshot.write_bytes(snapshot.read_bytes()[: snapshot.stat().st_size // 2])
    code, checks = verify_json(cli)
    assert code == 1
    assert checks["snapshot"]["status"] == "fail"
    assert "contexts.json" in checks["snapshot"]["detail"] and "truncated" in checks["snapshot"]["detail"]
    assert checks["database"]["status"] == checks["index"]["status"] == "ok"
    assert cli("verify") == 1 and "1 of 4 checks failed" in cli.out


def test_verify_catches_a_snapshot_that_disagrees_with_the_database(cli: Cli, folder: Path) -> None:
    snapshot = folder / "contexts.json"
    data = json.loads(snapshot.read_text())
    data["users"][0]["version"] += 5
    snapshot.write_text(json.dumps(data))
    code, checks = verify_json(cli)
    assert code == 1 and "another version" in checks["snapshot"]["detail"]


def test_verify_catches_a_stale_index(cli: Cli, folder: Path, tmp_path: Path) -> None:
    saved = tmp_path / "old-index"
    saved.mkdir()
    for name in ("vectors.faiss", "vectors.faiss.watermark.json"):
        shutil.copy(folder / name, saved / name)

    async def add_memory() -> None:
        async with MemorySystem(folder, settings=hashing_settings()) as ms:
            await ms.save_memory("bob", "Bob collects stamps", kind="fact")
            await ms.retrieve_memory("bob", "stamps")

    asyncio.run(add_memory())
    for name in ("vectors.faiss", "vectors.faiss.watermark.json"):
        shutil.copy(saved / name, folder / name)
    code, checks = verify_json(cli)
    assert code == 1
    assert checks["index"]["status"] == "fail"
    assert (
        "6 vectors up to id 6" in checks["index"]["detail"]
        and "7 embeddings up to id 7" in checks["index"]["detail"]
    )
    assert checks["snapshot"]["status"] == "ok"


def corrupt_table_root(db: Path, table: str) -> None:
    with sqlite3.connect(db) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    conn.close()
    with db.open("r+b") as fh:
        fh.seek((root - 1) * page_size)
        fh.write(b"\xff" * 64)


def test_verify_catches_a_corrupted_database(cli: Cli, folder: Path) -> None:
    corrupt_table_root(folder / "memory.db", "memories")
    code, checks = verify_json(cli)
    assert code == 1
    assert checks["database"]["status"] == "fail"
    assert "memory.db" in checks["database"]["detail"]
    assert cli("verify") == 1 and "Traceback" not in cli.err


def test_verify_reads_a_missing_snapshot_and_index_as_failures(cli: Cli, folder: Path) -> None:
    for name in ("contexts.json", "vectors.faiss", "vectors.faiss.watermark.json"):
        (folder / name).unlink()
    code, checks = verify_json(cli)
    assert code == 1
    assert checks["snapshot"]["status"] == checks["index"]["status"] == "fail"
    assert "missing" in checks["snapshot"]["detail"] and "missing" in checks["index"]["detail"]


# -- errors ----------------------------------------------------------------------------------


def test_unknown_user_is_one_line_and_exit_1(cli: Cli) -> None:
    for command in ("show", "history", "memories", "export"):
        assert cli(command, "zed") == 1
        assert_one_line_error(cli, "unknown user 'zed'")
    assert cli("search", "zed", "pizza") == 1
    assert_one_line_error(cli, "unknown user 'zed'")


@pytest.mark.parametrize(
    "argv",
    [
        ["users", "--limit", "0"],
        ["memories", "alice", "--offset", "-1"],
        ["nonsense"],
        [],
        ["users", "--sort", "height"],
        ["search", "alice", "pizza", "-k", "1000"],
        ["show", "x" * 200],
    ],
    ids=[
        "limit0",
        "offset-1",
        "unknown-command",
        "no-command",
        "bad-sort",
        "k-too-large",
        "long-id",
    ],
)
def test_bad_arguments_exit_2(cli: Cli, argv: list[str]) -> None:
    assert cli(*argv) == 2
    assert "Traceback" not in cli.err and "error" in cli.err


def test_a_bad_argument_is_named(cli: Cli) -> None:
    assert cli("search", "alice", "pizza", "-k", "1000") == 2
    assert_one_line_error(cli, "invalid k", "at most 50")


def test_missing_database_is_one_line_and_exit_1(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = Cli(tmp_path / "nowhere", config, capsys)
    assert cli("users") == 1
    assert_one_line_error(cli, "no database at", "nowhere")


def test_damaged_database_is_one_line_and_exit_1(cli: Cli, folder: Path) -> None:
    (folder / "memory.db").write_bytes(b"this is not a database" * 300)
    assert cli("users") == 1
    assert_one_line_error(cli, "memory.db")


def test_missing_config_file_is_a_usage_error(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = Cli(folder, tmp_path / "absent.toml", capsys)
    assert cli("users") == 2
    assert_one_line_error(cli, "absent.toml")


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    summaries = {choice.dest: choice.help for choice in subparsers._choices_actions}
    assert (
        set(summaries)
        == set(subparsers.choices)
        == {
            "users",
            "show",
            "history",
            "erasures",
            "memories",
            "search",
            "stats",
            "verify",
            "rebuild-index",
            "export",
            "import",
            "forget",
            "rollback",
        }
    )
    for name, sub in subparsers.choices.items():
        assert summaries[name] and sub.description, name
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
        assert main([name, "--help"]) == 0
        assert capsys.readouterr().out.startswith(f"usage: memory-admin {name}")
    for action in parser._actions:
        assert action.help, action.dest


def test_runs_as_a_real_process(folder: Path) -> None:
    users = run_cli(["--data-dir", str(folder), "users", "--json"])
    assert users.returncode == 0, users.stderr
    assert {r["user_id"] for r in json.loads(users.stdout)} == {"alice", "bob", "carol"}
    verify = run_cli(["verify", "--data-dir", str(folder)])  # folder options after the command too
    assert verify.returncode == 0 and "all 4 checks passed" in verify.stdout
    missing = run_cli(["--data-dir", str(folder), "show", "zed"])
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith("memory-admin: error: unknown user")
    assert "Traceback" not in missing.stderr
