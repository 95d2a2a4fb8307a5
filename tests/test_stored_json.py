"""A damaged stored record names its file and row; a damaged context is restored from the snapshot."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from memory import DataDamagedError, MemorySystem
from memory.inspector import Inspector
from memory.recovery import DB_NAME, SNAPSHOT_NAME
from memory.snapshot import read_snapshot
from memory.storage.sqlite_connection import sqlite3
from tests.admin_fixtures import hashing_settings
from tests.file_faults import flip_bit_in_table


async def _populate(make_system: Callable[..., MemorySystem], data_dir: Path) -> None:
    async with make_system(data_dir) as ms:
        await ms.update_context("alice", "I love pizza", "Noted", display_name="Alice")
        await ms.set_preference("alice", "food", "pizza")
        await ms.save_memory("alice", "Alice climbs in the Alps", kind="fact", metadata={"mood": "sunny"})
        await ms.update_context("bob", "hello", "hi", display_name="Bob")


# The opening quote of "Alice" made '#' (no longer JSON), or the A made a byte that is not UTF-8.
ROT = [pytest.param(b'"Alice"', 0x01, id="syntax"), pytest.param(b'Alice"', 0x80, id="utf8")]


@pytest.mark.parametrize(("marker", "bit"), ROT)
async def test_damaged_context_is_restored_from_the_snapshot_and_says_so(
    tmp_path: Path, make_system: Callable[..., MemorySystem], marker: bytes, bit: int
) -> None:
    data_dir = tmp_path / "data"
    await _populate(make_system, data_dir)
    db = data_dir / DB_NAME
    flip_bit_in_table(db, "contexts", marker, bit)
    async with make_system(data_dir) as ms:
        assert ms.report is not None
        notes = [note for note in ms.report.notes if "damaged" in note]
        assert len(notes) == 1
        assert "'alice'" in notes[0] and str(db) in notes[0] and SNAPSHOT_NAME in notes[0]
        ctx = await ms.get_user_context("alice")
        assert (ctx.display_name, dict(ctx.preferences), ctx.version) == ("Alice", {"food": "pizza"}, 3)
        history = await ms.history("alice")
        assert [(h.version, h.actor) for h in history] == [(1, "api"), (2, "api"), (3, "recovery")]
        assert history[-1].change["op"] == "restored_from_snapshot"
        assert (await ms.get_user_context("bob")).version == 1
        assert "memory-admin rollback alice 2" in notes[0]  # the advice works:
        rolled = await ms.rollback("alice", 2)
        assert (rolled.version, dict(rolled.preferences)) == (4, {"food": "pizza"})
        assert (await ms.update_context("alice", "again", "hi")).version == 5
    async with make_system(data_dir) as again:  # the repaired row is stored: a clean start
        assert again.report is not None and not any("damaged" in n for n in again.report.notes)
        assert (await again.get_user_context("alice")).version == 5


async def test_damaged_context_without_a_snapshot_stops_start_naming_the_database(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    data_dir = tmp_path / "data"
    await _populate(make_system, data_dir)
    db = data_dir / DB_NAME
    (data_dir / SNAPSHOT_NAME).unlink()
    flip_bit_in_table(db, "contexts", b'"Alice"')
    with pytest.raises(DataDamagedError) as info:
        await make_system(data_dir).start()
    message = str(info.value)
    assert info.value.path == db
    assert f"{db} is damaged: the contexts row of user 'alice' does not parse" in message
    assert "the snapshot cannot replace it" in message and "restore" in message


async def test_damaged_context_the_snapshot_lacks_stops_start_naming_the_database(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    data_dir = tmp_path / "data"
    snapshot = data_dir / SNAPSHOT_NAME
    async with make_system(data_dir) as ms:
        await ms.update_context("alice", "hello", "hi", display_name="Alice")
    older = tmp_path / "older.json"
    shutil.copy(snapshot, older)
    async with make_system(data_dir) as ms:
        await ms.update_context("carol", "hello", "hi", display_name="Carol")
    shutil.copy(older, snapshot)  # a snapshot from before carol came
    assert [u["user_id"] for u in read_snapshot(snapshot)] == ["alice"]
    flip_bit_in_table(data_dir / DB_NAME, "contexts", b'"Carol"')
    with pytest.raises(DataDamagedError) as info:
        await make_system(data_dir).start()
    message = str(info.value)
    assert "the contexts row of user 'carol' does not parse" in message
    assert f"the snapshot {snapshot} does not hold user 'carol'" in message
    assert info.value.path == data_dir / DB_NAME


async def test_damaged_history_row_names_the_file_and_the_row(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    data_dir = tmp_path / "data"
    await _populate(make_system, data_dir)
    db = data_dir / DB_NAME
    flip_bit_in_table(db, "context_history", b'"Alice"')
    async with make_system(data_dir) as ms:
        for call in (ms.history, ms.export_user):
            with pytest.raises(DataDamagedError) as info:
                await call("alice")
            assert f"{db} is damaged: the context_history row of user 'alice' at version" in str(info.value)
        assert [h.version for h in await ms.history("bob")] == [1]
    async with Inspector(data_dir, hashing_settings()) as view:
        with pytest.raises(DataDamagedError, match="context_history row of user 'alice'"):
            await view.history("alice")


async def test_damaged_memory_row_names_the_file_and_the_row(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    data_dir = tmp_path / "data"
    await _populate(make_system, data_dir)
    db = data_dir / DB_NAME
    with closing(sqlite3.connect(db)) as conn:
        (fact_id,) = conn.execute("SELECT id FROM memories WHERE metadata LIKE '%mood%'").fetchone()
    flip_bit_in_table(db, "memories", b'"mood"')
    async with make_system(data_dir) as ms:
        for call in (ms.get_memories, ms.export_user):
            with pytest.raises(DataDamagedError) as info:
                await call("alice")
            assert f"{db} is damaged: the memories row {fact_id} (of user 'alice') does not parse" in str(
                info.value
            )
        assert len(await ms.get_memories("bob")) == 1
