"""memory-admin's commands that change data: forget, rollback, import, rebuild-index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import pytest

from memory.lexical import user_terms
from memory.snapshot import read_snapshot
from memory.storage.sqlite_connection import sqlite3
from tests.admin_fixtures import (
    HASHING_CONFIG,
    REPO,
    Cli,
    run_cli,
    subprocess_env,
)
from tests.test_admin import file_digests


def query(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql, params).fetchall())
    finally:
        conn.close()


def test_forget_leaves_nothing_of_the_user(cli: Cli, folder: Path) -> None:
    db = folder / "memory.db"
    ids = [row[0] for row in query(db, "SELECT id FROM memories WHERE user_id = 'alice'")]
    assert len(ids) == 4
    assert cli("forget", "alice", "--yes") == 0, cli.err
    assert "forgot user 'alice'" in cli.out
    for table in ("contexts", "context_history", "memories"):
        assert query(db, f"SELECT count(*) FROM {table} WHERE user_id = 'alice'") == [(0,)], table
    marks = ",".join("?" * len(ids))
    assert query(db, f"SELECT count(*) FROM memories_fts WHERE rowid IN ({marks})", tuple(ids)) == [(0,)]
    miso = user_terms("alice", "Miso")
    assert query(db, "SELECT count(*) FROM memories_fts WHERE memories_fts MATCH ?", (miso,)) == [(0,)]
    assert query(db, "SELECT count(*) FROM contexts WHERE user_id = 'bob'") == [(1,)]
    snapshot_users = {u["user_id"] for u in read_snapshot(folder / "contexts.json")}
    assert snapshot_users == {"bob"}
    index = faiss.read_index(str(folder / "vectors.faiss"))
    assert isinstance(index, faiss.IndexIDMap)
    indexed = set(faiss.vector_to_array(index.id_map).tolist())
    assert indexed and not indexed & set(ids)
    assert cli("verify") == 0, cli.out


def test_forget_of_an_unknown_user_fails_before_asking(cli: Cli) -> None:
    assert cli("forget", "zed") == 1
    assert "unknown user 'zed'" in cli.err and "--yes" not in cli.err


def test_export_then_import_round_trips(cli: Cli, tmp_path: Path) -> None:
    exported = tmp_path / "alice.json"
    assert cli("export", "alice", "--output", str(exported)) == 0
    before = json.loads(exported.read_text())
    assert cli("forget", "alice", "--yes") == 0
    assert cli("show", "alice") == 1
    assert cli("import", str(exported), "--yes") == 0, cli.err
    assert "imported user 'alice': 4 of 4 memories added" in cli.out
    assert cli("import", str(exported), "--yes") == 0, cli.err
    assert "imported user 'alice': 0 of 4 memories added" in cli.out  # a repeat adds nothing
    assert cli("export", "alice") == 0
    after = json.loads(cli.out)
    context_before, context_after = before["context"], after["context"]
    assert context_after.pop("version") == 1 and context_before.pop("version") == 4
    # The imported memories have new ids; the recent exchanges cite those, not the old ones.
    cited = [e.pop("memory_id") for e in context_after["recent"]]
    assert set(cited) <= {m["id"] for m in after["memories"]} - {m["id"] for m in before["memories"]}
    for exchange in context_before["recent"]:
        exchange.pop("memory_id")
    assert context_after == context_before

    def memory_fields(doc: dict[str, list[dict[str, object]]]) -> list[tuple[object, ...]]:
        keys = ("text", "kind", "created_at", "metadata", "source_id")
        return [tuple(m[k] for k in keys) for m in doc["memories"]]

    assert memory_fields(after) == memory_fields(before)
    assert cli("search", "alice", "Miso cat", "--json") == 0
    assert "Miso" in json.loads(cli.out)[0]["text"]


def test_import_into_a_new_folder(
    cli: Cli, config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exported = tmp_path / "bob.json"
    assert cli("export", "bob", "--output", str(exported)) == 0
    fresh = Cli(tmp_path / "fresh", config, capsys)
    assert fresh("import", str(exported), "--yes") == 0, fresh.err
    assert fresh("users", "--json") == 0
    assert [(u["user_id"], u["memories"]) for u in json.loads(fresh.out)] == [("bob", 1)]


def test_import_of_a_bad_file_is_one_line(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "memory-bot-user-export/1", "user_id": "dan", "memories": [')
    assert cli("import", str(bad), "--yes") == 1
    assert "bad.json is not valid JSON" in cli.err and "Traceback" not in cli.err
    bad.write_text('{"format": "something else"}')
    assert cli("import", str(bad), "--yes") == 2
    assert "not a memory-bot export" in cli.err
    assert cli("import", str(tmp_path / "absent.json"), "--yes") == 1
    assert "absent.json" in cli.err


def test_rollback_makes_a_new_version_equal_to_the_old_one(cli: Cli) -> None:
    assert cli("rollback", "alice", "2", "--yes") == 0, cli.err
    assert "now at version 5, equal to version 2" in cli.out
    assert cli("show", "alice", "--json") == 0
    context = json.loads(cli.out)["context"]
    assert (context["version"], context["conversations_count"], context["preferences"]) == (
        5,
        2,
        {},
    )
    assert cli("history", "alice", "--json") == 0
    last = json.loads(cli.out)[-1]
    assert last["actor"] == "admin" and last["change"] == {
        "op": "rollback",
        "from_version": 4,
        "to_version": 2,
    }


def test_rollback_to_a_missing_version_fails_before_asking(cli: Cli) -> None:
    assert cli("rollback", "alice", "99") == 1
    assert "has no version 99; versions 1 to 4 exist" in cli.err


def test_rebuild_index_restores_a_missing_index_with_progress(cli: Cli, folder: Path) -> None:
    for name in ("vectors.faiss", "vectors.faiss.watermark.json"):
        (folder / name).unlink()
    assert cli("verify") == 1
    assert cli("rebuild-index", "--yes") == 0, cli.err
    assert "rebuilt the index: 6 vectors" in cli.out
    assert "indexed 6/6 vectors" in cli.err
    assert cli("verify") == 0, cli.out


def test_an_encoder_that_did_not_make_the_embeddings_is_refused(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.toml"
    other.write_text(HASHING_CONFIG + "hashing_dim = 128\n")
    cli = Cli(folder, other, capsys)
    assert cli("forget", "alice", "--yes") == 2
    assert "hashing-384" in cli.err and "hashing-128" in cli.err
    assert cli("search", "alice", "pizza") == 2
    db = folder / "memory.db"
    assert query(db, "SELECT count(*) FROM memories WHERE embedding IS NOT NULL") == [(6,)]
    assert query(db, "SELECT count(*) FROM contexts WHERE user_id = 'alice'") == [(1,)]


@pytest.mark.parametrize(
    "argv",
    [["forget", "alice"], ["rollback", "alice", "1"], ["rebuild-index"], ["import", "EXPORT"]],
    ids=lambda a: a[0],
)
def test_without_yes_and_no_terminal_a_change_is_refused(
    folder: Path, tmp_path: Path, argv: list[str]
) -> None:
    exported = tmp_path / "alice.json"
    exported.write_text(run_cli(["--data-dir", str(folder), "export", "alice"]).stdout)
    argv = [str(exported) if a == "EXPORT" else a for a in argv]
    before = file_digests(folder)
    result = run_cli(["--data-dir", str(folder), *argv])
    assert result.returncode == 2
    assert "stdin is not a terminal" in result.stderr and "pass --yes" in result.stderr
    assert file_digests(folder) == before


def answer_prompt(folder: Path, answer: bytes, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with a terminal as stdin and type ``answer`` into it."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "memory.admin", "--data-dir", str(folder), *argv],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
            cwd=REPO,
        )
        os.close(slave)
        slave = -1
        os.write(master, answer)
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_a_terminal_is_asked_and_no_changes_nothing(folder: Path) -> None:
    before = file_digests(folder)
    result = answer_prompt(folder, b"n\n", "forget", "alice")
    assert result.returncode == 1
    assert "Forget everything about user 'alice' (4 versions, 4 memories)" in result.stderr
    assert "cancelled; nothing was changed" in result.stderr
    assert file_digests(folder) == before


def test_a_terminal_that_answers_yes_runs_the_change(folder: Path) -> None:
    result = answer_prompt(folder, b"y\n", "forget", "alice")
    assert result.returncode == 0, result.stderr
    assert query(folder / "memory.db", "SELECT count(*) FROM memories WHERE user_id = 'alice'") == [(0,)]
