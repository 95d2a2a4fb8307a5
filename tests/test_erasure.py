"""A forget is final everywhere: rows, terms, recent exchanges, history states, snapshot, index,
exports, prompts; and each erasure leaves an audit record with no content.

Each claim is checked on the bytes of the files, not only through the API.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import orjson
import pytest

from memory import MemorySystem
from memory.index import PerUserIndex
from memory.ranker import cached_texts
from tests.conftest import PYTHON, ROOT, subprocess_env

SECRET = "Zanzibarian quokkas adore marzipan"  # words found nowhere else in the folder
FILES = ("memory.db", "memory.db-wal", "contexts.json")


pytestmark = pytest.mark.both_backends  # one behaviour suite, both storage backends


def folder_bytes(data_dir: Path) -> bytes:
    """Every byte of the database, its WAL and the snapshot, lower-cased."""
    found = b""
    for name in FILES:
        path = data_dir / name
        if path.exists():
            found += path.read_bytes().lower()
    return found


def leaked_words(data_dir: Path) -> list[str]:
    """The secret's words (and their FTS5 stems, which lose a suffix) still in the files."""
    data = folder_bytes(data_dir)
    return [word for word in ("zanzibar", "quokka", "marzipan") if word.encode() in data]


async def index_ids(ms: MemorySystem) -> set[int]:
    """The memory ids whose vectors are in the index file on disk (read after a close)."""
    raw = (ms.data_dir / "vectors.faiss").read_bytes()
    index: Any = faiss.deserialize_index(np.frombuffer(raw, dtype=np.uint8))  # an IndexIDMap2
    return set(faiss.vector_to_array(index.id_map).tolist())


async def test_an_erasure_empties_the_rankers_cached_analyses_of_texts(ms: MemorySystem) -> None:
    note = await ms.save_memory("bo", SECRET, kind="note")
    await ms.save_memory("bo", "an ordinary note about tea", kind="note")
    assert [r.memory.id for r in await ms.retrieve_memory("bo", SECRET, k=1)] == [note.id]
    assert cached_texts() > 0  # the reranker analysed the pool's texts, the secret among them
    await ms.forget_memory("bo", note.id)
    assert cached_texts() == 0


@pytest.mark.sqlite_only("reads SQLite's files, the snapshot and the FAISS file")
async def test_a_forgotten_message_is_gone_from_every_file_and_view(
    make_system: Callable[..., MemorySystem],
) -> None:
    ms = make_system()
    async with ms:
        await ms.update_context("ana", "hello there", "hi", source_id="m1")
        await ms.update_context("ana", SECRET, "Noted!", source_id="m2")
        await ms.update_context("ana", "what a day", "indeed", source_id="m3")
        await ms.retrieve_memory("ana", "quokkas")  # embedded and indexed
        assert leaked_words(ms.data_dir)  # the test can fail: the text was in the files
        forgotten = await ms.forget_source("m2")
        assert [m.source_id for m in forgotten] == ["m2"]
        ctx = await ms.get_user_context("ana")
        assert [e.message for e in ctx.recent] == ["hello there", "what a day"]
        assert all(SECRET not in orjson.dumps(e.to_dict()).decode() for e in await ms.history("ana"))
        assert SECRET not in orjson.dumps(await ms.export_user("ana")).decode()
        assert not any("quokka" in r.memory.text for r in await ms.retrieve_memory("ana", "quokkas", 5))
        # The call has returned: the snapshot is rewritten and the terms purged already.
        assert leaked_words(ms.data_dir) == []
        # The next turn was indexed with the forgotten one's words: no longer.
        found = await ms.retrieve_memory("ana", "marzipan", 5)
        assert [r.memory.id for r in found if r.lexical_score is not None] == []
        records = await ms.erasures("ana")
        assert [(r.request, r.rows >= 1) for r in records] == [("forget_source", True)]
    assert leaked_words(ms.data_dir) == []


@pytest.mark.sqlite_only("reads SQLite's files, the snapshot and the FAISS file")
async def test_forget_memory_and_forget_user_purge_the_terms(
    make_system: Callable[..., MemorySystem], caplog: pytest.LogCaptureFixture
) -> None:
    ms = make_system()
    async with ms:
        note = await ms.save_memory("bo", SECRET, kind="note")
        await ms.save_memory("bo", "an ordinary note about tea", kind="note")
        await ms.save_memory("cy", "Cy keeps bees", kind="fact")
        assert leaked_words(ms.data_dir)
        with caplog.at_level(logging.INFO, logger="memory.audit"):
            await ms.forget_memory("bo", note.id, actor="tester")
        assert leaked_words(ms.data_dir) == []
        assert any("erasure: forget_memory of user bo" in r.getMessage() for r in caplog.records)
        await ms.update_context("bo", SECRET, "ok")
        assert leaked_words(ms.data_dir)
        assert await ms.forget_user("bo", actor="tester") is True
        assert leaked_words(ms.data_dir) == []
        records = await ms.erasures()
        assert [(r.user_id, r.request, r.actor) for r in records] == [
            ("bo", "forget_memory", "tester"),
            ("bo", "forget_user", "tester"),
        ]
        assert records[1].rows >= 3  # two memories, a version, the context
        assert all(set(r.to_dict()) == {"user_id", "at", "actor", "request", "rows"} for r in records)
        assert [m.text for m in await ms.get_memories("cy")] == ["Cy keeps bees"]


@pytest.mark.sqlite_only("reads SQLite's files, the snapshot and the FAISS file")
async def test_a_cancellation_after_the_commit_still_removes_the_vectors(
    make_system: Callable[..., MemorySystem],
) -> None:
    """Cancelled once its delete committed (while a rebuild holds the index, so the forget is
    still waiting to remove the vectors), the forget still takes them out of the index being
    rebuilt; close() then saves no vector of it."""
    ms = make_system()
    forgotten: list[int] = []
    async with ms:
        memories = await asyncio.gather(*(ms.save_memory("di", f"note {n} {SECRET}") for n in range(1500)))
        await ms.retrieve_memory("di", "note")
        for target in memories[:10]:
            before = await ms.count_memories("di")
            rebuild = asyncio.create_task(ms.rebuild_index())
            await asyncio.sleep(0)  # the rebuild takes the index lock first
            forget = asyncio.create_task(ms.forget_memory("di", target.id))
            while await ms.count_memories("di") == before:
                await asyncio.sleep(0)  # until the delete has committed
            in_window = not forget.done()
            forget.cancel()
            if in_window:
                with pytest.raises(asyncio.CancelledError):
                    await forget
            else:
                await forget
            await rebuild
            forgotten.append(target.id)
            if in_window:
                break
        assert in_window, "no forget was caught between its commit and its index removal"
        found = await ms.retrieve_memory("di", "note", 50)
        assert not set(forgotten) & {r.memory.id for r in found}
    on_disk = await index_ids(ms)
    assert not set(forgotten) & on_disk
    assert len(on_disk) == 1500 - len(forgotten)


@pytest.mark.sqlite_only("reads SQLite's files, the snapshot and the FAISS file")
def test_after_forget_user_and_kill_9_the_restart_drops_the_vectors_from_the_file(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    data_dir = tmp_path / "data"

    async def populate() -> set[int]:
        async with make_system(data_dir) as ms:
            ids = {(await ms.save_memory("gone", f"secret {n}")).id for n in range(10)}
            for n in range(5):
                await ms.save_memory("kept", f"kept {n}")
            await ms.retrieve_memory("gone", "secret")
            await ms.retrieve_memory("kept", "kept")
        return ids

    gone = asyncio.run(populate())
    proc = subprocess.Popen(
        [PYTHON, "-m", "tests.erasure_worker", str(data_dir), "gone"],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "forgot", line + (proc.stderr.read() if proc.stderr else "")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=60)

    async def restart() -> tuple[set[int], str]:
        ms = make_system(data_dir)
        report = await ms.start()
        assert await ms.wait_ready()  # the index opens in the background
        on_disk = await index_ids(ms)  # read while running: the start itself rewrote the file
        await ms.close()
        return on_disk, str(report.index_action)

    on_disk, action = asyncio.run(restart())
    assert not on_disk & gone, action
    assert len(on_disk) == 5


@pytest.mark.sqlite_only("reads SQLite's files, the snapshot and the FAISS file")
async def test_an_index_made_for_another_database_is_rebuilt(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    """Same ids, other users: copied from another folder, its vectors are never trusted."""
    first, second = tmp_path / "first", tmp_path / "second"
    async with make_system(first) as ms:
        for n in range(6):
            await ms.save_memory("eve", f"eve likes sailing {n}")
        await ms.retrieve_memory("eve", "sailing")
    async with make_system(second) as ms:
        for n in range(6):
            await ms.save_memory("fay", f"fay collects stamps {n}")
        await ms.retrieve_memory("fay", "stamps")
    for name in ("vectors.faiss", "vectors.faiss.watermark.json"):
        (second / name).write_bytes((first / name).read_bytes())
    ms = make_system(second)
    report = await ms.start()
    try:
        assert await ms.wait_ready()  # the index opens in the background
        assert "another database" in str(report.index_action)
        found = await ms.retrieve_memory("fay", "fay collects stamps 3", 1)
        assert found[0].memory.text == "fay collects stamps 3"
        assert found[0].dense_score is not None and found[0].dense_score > 0.99
    finally:
        await ms.close()


@pytest.mark.sqlite_only("reads SQLite's files, the snapshot and the FAISS file")
async def test_an_index_whose_owners_disagree_with_the_database_is_rebuilt(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    data_dir = tmp_path / "data"
    async with make_system(data_dir) as ms:
        a = await ms.save_memory("gil", "gil rows boats")
        b = await ms.save_memory("hal", "hal bakes bread")
        await ms.retrieve_memory("gil", "boats")
        await ms.retrieve_memory("hal", "bread")
    path = data_dir / "vectors.faiss"
    mark = orjson.loads((data_dir / "vectors.faiss.watermark.json").read_bytes())
    # Same database, but the file says gil's vector is hal's and the other way round.
    index = PerUserIndex.load(path, {a.id: "gil", b.id: "hal"}, mark["model"], mark["database_id"])
    with pytest.raises(Exception, match="other users"):
        PerUserIndex.load(path, {a.id: "hal", b.id: "gil"}, mark["model"], mark["database_id"])
    assert index.owner(a.id) == "gil"
