from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from memory import MemorySystem, SnapshotCorruptError, StorageError, UserContext
from memory.atomic import temp_path
from memory.autosave import AutoSaver
from memory.recovery import SNAPSHOT_NAME
from memory.snapshot import read_snapshot, write_snapshot


async def test_write_then_read_round_trips_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "contexts.json"
    parts = [orjson.dumps({"user_id": f"u{i}", "n": i}) for i in range(3)]
    written = await write_snapshot(path, parts, 3)
    assert written == path.stat().st_size
    assert [u["n"] for u in read_snapshot(path)] == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["contexts.json"]


@pytest.mark.parametrize("cut", [2, 10, 100])
async def test_truncated_snapshot_is_detected(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "contexts.json"
    await write_snapshot(path, [orjson.dumps({"user_id": "u" * 200})], 1)
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(SnapshotCorruptError, match="truncated"):
        read_snapshot(path)


def test_snapshot_with_wrong_count_or_format_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "contexts.json"
    path.write_bytes(
        orjson.dumps({"format": "memory-bot-contexts", "format_version": 1, "count": 2, "users": [{}]})
    )
    with pytest.raises(SnapshotCorruptError, match="incomplete"):
        read_snapshot(path)
    path.write_bytes(b'{"something": "else"}')
    with pytest.raises(SnapshotCorruptError, match="not a memory-bot snapshot"):
        read_snapshot(path)


async def test_snapshot_holds_every_context_after_close(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    async with make_system() as ms:
        for i in range(20):
            await ms.update_context(f"u{i}", "hi", "hello")
        expected = {u: await ms.get_user_context(u) for u in await ms.list_users()}
    users = read_snapshot(tmp_path / "data" / SNAPSHOT_NAME)
    assert {u["user_id"]: UserContext.from_dict(u) for u in users} == expected


async def test_auto_save_coalesces_many_changes_into_few_writes(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    async with make_system(storage={"save_interval": 3600}) as ms:
        await ms.update_context("first", "hi", "hello")
        async with asyncio.timeout(30):  # the first save of a new folder is immediate
            while (await ms.stats())["saves"] < 1:
                await asyncio.sleep(0.01)
        for i in range(200):
            await ms.update_context(f"u{i}", "hi", "hello")
        stats = await ms.stats()
        assert stats["saves"] == 1
        assert stats["save_pending"] is True
        assert stats["save_interval"] == 3600
    assert len(read_snapshot(tmp_path / "data" / SNAPSHOT_NAME)) == 201


async def test_failed_save_is_logged_shown_in_stats_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the snapshot's folder should be")
    saver = AutoSaver(blocker / "contexts.json", 0.01, lambda: ([b"{}"], 1))
    caplog.set_level(logging.ERROR)
    saver.start()
    saver.mark_dirty()
    while saver.failures < 2:
        await asyncio.sleep(0.01)
    stats = saver.stats()
    assert stats["save_failures"] >= 2
    assert "not-a-folder" in stats["last_save_error"]
    assert stats["save_pending"] is True
    assert any("auto-save failed" in r.getMessage() for r in caplog.records)
    with pytest.raises(StorageError, match="could not write the snapshot"):
        await saver.close()


async def test_a_folder_at_the_temp_path_is_a_storage_error_not_a_raw_os_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "contexts.json"
    temp_path(path).mkdir()  # the write cannot make its temp file, nor remove what stands there
    with pytest.raises(StorageError, match="could not write the snapshot"):
        await write_snapshot(path, [b'{"user_id": "a"}'], 1)
    assert not path.exists()
    assert any("could not remove the temp file" in r.getMessage() for r in caplog.records)
