"""The integrity check runs after start(): contexts first, damage reported at once, then no writes.

The damage is real bytes in a real file (a malformed b-tree page, ``tests/file_faults.py``); the
check is held through the public constructor (``MemorySystem(integrity_hold=...)``), never by
sleeping.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from bot.health import judge
from memory import DataDamagedError, HashingEncoder, MemorySystem
from memory.recovery import DB_NAME
from memory.storage.sqlite import SqliteStore
from tests.conftest import test_settings
from tests.file_faults import break_page_of_tree

DEADLINE = 30.0
NOTES = 300
# What the damage breaks: an index that no start-up read, count or write of these tests uses.
BROKEN = "memories_by_source"


def system(folder: Path, hold: asyncio.Event | None = None, **storage: Any) -> MemorySystem:
    # No exchange memories, and a retrieve embeds all of the user's pending notes itself: the
    # folder is left with nothing to embed, so every write after a start is the test's own.
    retrieval = {"store_exchanges": False, "own_pending_per_query": 4096, "pending_wait_ms": 60_000}
    settings = test_settings(storage=storage, retrieval=retrieval)
    return MemorySystem(folder, settings=settings, encoder=HashingEncoder(), integrity_hold=hold)


async def filled(folder: Path) -> Path:
    async with system(folder) as ms:
        await ms.update_context("ann", "hello, I live in Lyon", "welcome")
        for i in range(NOTES):
            source = f"message-{i:04d}-" + "x" * 80  # long: the index of sources fills pages
            await ms.save_memory("ann", f"note {i} about the weather", source_id=source)
        await ms.retrieve_memory("ann", "weather")  # embeds them all
        assert (await ms.stats())["pending_embeddings"] == 0
    return folder


async def stored_version(folder: Path) -> int:
    store = SqliteStore(folder / DB_NAME, readonly=True)
    await store.open(integrity_check=False)
    try:
        data = await store.context_data("ann")
    finally:
        await store.close()
    assert data is not None
    version: int = orjson.loads(data)["version"]
    return version


async def test_start_returns_before_the_integrity_check_finishes(tmp_path: Path) -> None:
    folder = await filled(tmp_path / "data")
    hold = asyncio.Event()
    async with asyncio.timeout(DEADLINE), system(folder, hold) as ms:
        # start() returned while the check cannot even begin: contexts and updates work now.
        assert (await ms.get_user_context("ann")).conversations_count == 1
        ctx = await ms.update_context("ann", "one more", "ok")
        assert ctx.version == 2
        stats = await ms.stats()
        assert stats["integrity_check"] == "checking" and stats["integrity_problem"] is None
        assert judge(stats, None, None).healthy
        hold.set()
        assert await ms.integrity_checked() == "ok"
        stats = await ms.stats()
        assert stats["integrity_check"] == "ok" and stats["integrity_check_seconds"] is not None
        assert judge(stats, None, None).healthy
    assert await stored_version(folder) == 2


async def test_damage_found_after_start_is_reported_and_refuses_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = await filled(tmp_path / "data")
    break_page_of_tree(folder / DB_NAME, BROKEN)
    # What a start that waits for the check says of this file: the background check says the same.
    with pytest.raises(DataDamagedError) as at_start:
        await system(folder, integrity_check_blocking=True).start()
    assert f"database {folder / DB_NAME} is damaged" in str(at_start.value)
    hold = asyncio.Event()
    async with asyncio.timeout(DEADLINE), system(folder, hold) as ms:
        before = await ms.get_user_context("ann")
        assert before.conversations_count == 1  # readable before the check has run
        with caplog.at_level(logging.ERROR, logger="memory.storage.sqlite_check"):
            hold.set()
            assert await ms.integrity_checked() == "damaged"
        assert [r.levelno for r in caplog.records] == [logging.ERROR]
        assert str(at_start.value) in caplog.records[0].getMessage()
        stats = await ms.stats()
        assert stats["integrity_check"] == "damaged"
        assert stats["integrity_problem"] == str(at_start.value)
        health = judge(stats, None, None)
        assert health.reasons == (f"database integrity check damaged: {at_start.value}",)
        for write in (
            ms.update_context("ann", "hello again", "hi"),
            ms.set_preference("ann", "food", "ramen"),
            ms.save_memory("ann", "my sister lives in Lyon"),
        ):
            with pytest.raises(DataDamagedError) as refused:
                await write
            assert str(refused.value) == str(at_start.value)
        assert await ms.get_user_context("ann") is before  # nothing changed here
        assert await ms.count_memories("ann") == NOTES
    assert await stored_version(folder) == before.version  # nor in the file


async def test_the_check_can_be_turned_off(tmp_path: Path) -> None:
    folder = await filled(tmp_path / "data")
    break_page_of_tree(folder / DB_NAME, BROKEN)
    async with asyncio.timeout(DEADLINE), system(folder, integrity_check_on_start=False) as ms:
        assert await ms.integrity_checked() == "off"
        assert (await ms.stats())["integrity_check"] == "off"
        assert judge(await ms.stats(), None, None).healthy
        assert (await ms.get_user_context("ann")).conversations_count == 1
