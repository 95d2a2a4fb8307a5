"""Import is idempotent: an export imported twice adds nothing the second time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from memory import InvalidInputError, MemorySystem

MEMORIES = 31


pytestmark = pytest.mark.both_backends  # one behaviour suite, both storage backends


async def person_with_memories(ms: MemorySystem) -> dict[str, Any]:
    """alice with a context, 31 memories (exchanges, facts, notes) and her export."""
    start = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
    for i in range(10):
        await ms.update_context("alice", f"message number {i}", f"reply {i}", display_name="Alice")
    await ms.set_preference("alice", "music", "jazz")
    for i in range(MEMORIES - 10):
        kind = "fact" if i % 2 else "note"
        await ms.save_memory("alice", f"memory {i}", kind=kind, created_at=start + timedelta(hours=i))
    await ms.save_memory("bob", "bob's own note")
    assert await ms.count_memories("alice") == MEMORIES
    return await ms.export_user("alice")


def texts(memories: list[Any]) -> list[tuple[str, str, datetime]]:
    return sorted((m.kind, m.text, m.created_at) for m in memories)


async def test_each_exported_memory_carries_a_stable_key(ms: MemorySystem) -> None:
    export = await person_with_memories(ms)
    keys = [m["key"] for m in export["memories"]]
    assert len(keys) == MEMORIES and len(set(keys)) == MEMORIES
    assert all(isinstance(k, str) and len(k) == 32 for k in keys)
    again = await ms.export_user("alice")
    assert [m["key"] for m in again["memories"]] == keys


async def test_importing_the_same_export_twice_adds_nothing(
    ms: MemorySystem, make_system: Callable[..., MemorySystem], tmp_path: Path
) -> None:
    export = await person_with_memories(ms)
    async with make_system(tmp_path / "other") as other:
        first = await other.import_user(export)
        assert first is not None and first.version == 1
        history = await other.history("alice")
        second = await other.import_user(export)
        assert await other.count_memories("alice") == MEMORIES  # once 62
        assert second == first  # the same context: no new version
        assert await other.history("alice") == history
        assert texts(await other.get_memories("alice")) == texts(await ms.get_memories("alice"))
        re_export = await other.export_user("alice")
    # The keys are the same in another database, though the memory ids are new.
    assert sorted(m["key"] for m in re_export["memories"]) == sorted(m["key"] for m in export["memories"])


async def test_importing_a_user_back_into_the_same_system_is_a_no_op(ms: MemorySystem) -> None:
    export = await person_with_memories(ms)
    before = (await ms.get_user_context("alice"), await ms.history("alice"), await ms.get_memories("alice"))
    stats = await ms.stats()
    ctx = await ms.import_user(export)
    assert ctx is before[0]
    after = (await ms.get_user_context("alice"), await ms.history("alice"), await ms.get_memories("alice"))
    assert after == before
    assert (await ms.stats())["history_rows"] == stats["history_rows"]


async def test_import_brings_back_only_what_is_missing(ms: MemorySystem) -> None:
    export = await person_with_memories(ms)
    memories = await ms.get_memories("alice")
    gone = memories[12]
    await ms.forget_memory("alice", gone.id)
    version = (await ms.get_user_context("alice")).version
    await ms.import_user(export)
    now = await ms.get_memories("alice")
    assert len(now) == MEMORIES
    assert texts(now) == texts(memories)
    assert next(m for m in now if m.text == gone.text).id != gone.id  # restored with a new id
    assert (await ms.get_user_context("alice")).version == version  # the context was the same
    found = await ms.retrieve_memory("alice", gone.text)
    assert found[0].memory.text == gone.text


async def test_an_export_without_keys_matches_on_kind_time_and_text(ms: MemorySystem) -> None:
    export = await person_with_memories(ms)
    unkeyed = [{k: v for k, v in m.items() if k != "key"} for m in export["memories"]]
    stripped = {**export, "memories": unkeyed}
    await ms.import_user(stripped)
    assert await ms.count_memories("alice") == MEMORIES


async def test_a_changed_context_becomes_one_new_version(ms: MemorySystem) -> None:
    export = await person_with_memories(ms)
    current = await ms.get_user_context("alice")
    changed = {**export, "context": {**export["context"], "preferences": {"music": "rock"}}}
    ctx = await ms.import_user(changed)
    assert ctx is not None and ctx.version == current.version + 1
    assert dict(ctx.preferences) == {"music": "rock"}
    assert (await ms.history("alice"))[-1].change["op"] == "import"
    assert await ms.import_user(changed) == ctx  # and again: nothing new
    assert (await ms.get_user_context("alice")).version == ctx.version
    assert await ms.count_memories("alice") == MEMORIES


async def test_equal_memories_inside_one_export_are_kept_as_many(ms: MemorySystem) -> None:
    when = datetime(2024, 1, 2, tzinfo=UTC).isoformat()
    twice: dict[str, Any] = {
        "text": "said twice",
        "kind": "note",
        "created_at": when,
        "metadata": {},
        "source_id": None,
    }
    document = {
        "format": "memory-bot-user-export/1",
        "user_id": "carol",
        "context": None,
        "memories": [twice, twice],
    }
    assert await ms.import_user(document) is None
    assert await ms.import_user(document) is None
    assert [m.text for m in await ms.get_memories("carol")] == ["said twice", "said twice"]


async def test_an_edited_memory_is_imported_as_a_new_one(ms: MemorySystem) -> None:
    export = await person_with_memories(ms)
    first = {**export["memories"][0], "text": "an edited text"}  # its key no longer matches it
    await ms.import_user({**export, "memories": [first]})
    assert await ms.count_memories("alice") == MEMORIES + 1
    assert "an edited text" in [m.text for m in await ms.get_memories("alice")]


async def test_import_honours_the_limits_and_changes_nothing(
    make_system: Callable[..., MemorySystem],
) -> None:
    async with make_system(limits={"max_preferences": 3, "recent_exchanges": 2}) as ms:
        await ms.update_context("alice", "hi", "hello")
        export = await ms.export_user("alice")
        many = {**export, "context": {**export["context"], "preferences": {f"k{i}": i for i in range(500)}}}
        with pytest.raises(InvalidInputError, match=r"at most 3 per user \(limits.max_preferences\)"):
            await ms.import_user(many)
        exchange = export["context"]["recent"][0]
        long_recent = {**export, "context": {**export["context"], "recent": [exchange] * 3}}
        with pytest.raises(InvalidInputError, match=r"at most 2 exchanges \(limits.recent_exchanges\)"):
            await ms.import_user(long_recent)
        oversized = {**exchange, "message": "x" * 4001}
        with pytest.raises(InvalidInputError, match="recent message: must be at most 4000"):
            await ms.import_user({**export, "context": {**export["context"], "recent": [oversized]}})
        bad_kind = {**export, "memories": [{**export["memories"][0], "kind": []}]}
        with pytest.raises(InvalidInputError, match="memory kind"):
            await ms.import_user(bad_kind)
        assert without_time(await ms.export_user("alice")) == without_time(export)


def without_time(document: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in document.items() if key != "exported_at"}


async def test_imported_exchanges_cite_the_memories_of_this_database(
    ms: MemorySystem, make_system: Callable[..., MemorySystem], tmp_path: Path
) -> None:
    export = await person_with_memories(ms)
    async with make_system(tmp_path / "other") as other:
        await other.save_memory("carol", "takes id 1 here")  # so the ids differ from the export's
        ctx = await other.import_user(export)
        assert ctx is not None and len(ctx.recent) == 10
        memories = {m.id: m for m in await other.get_memories("alice")}
        for exchange in ctx.recent:
            assert exchange.memory_id is not None
            assert f": {exchange.message}\nBot: {exchange.response}" in memories[exchange.memory_id].text
        cited = ctx.recent[-1]
        assert cited.memory_id is not None
        await other.forget_memory("alice", cited.memory_id)  # the forget finds the exchange
        after = await other.get_user_context("alice")
        assert cited.message not in [e.message for e in after.recent]
        assert await other.import_user(export) is not None
        assert await other.count_memories("alice") == MEMORIES  # the forgotten one came back
