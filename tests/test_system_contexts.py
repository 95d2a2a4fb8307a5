from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from memory import (
    InvalidInputError,
    MemorySystem,
    SystemClosedError,
    UserNotFoundError,
    VersionNotFoundError,
)

pytestmark = pytest.mark.both_backends  # one behaviour suite, both storage backends


async def test_concurrent_gets_on_one_user_return_the_same_object(ms: MemorySystem) -> None:
    await ms.update_context("alice", "hi", "hello")
    contexts = await asyncio.gather(*(ms.get_user_context("alice") for _ in range(100)))
    assert all(c is contexts[0] for c in contexts)
    fresh = await asyncio.gather(*(ms.get_user_context("newcomer") for _ in range(100)))
    assert all(c is fresh[0] for c in fresh)
    assert fresh[0].version == 0


async def test_concurrent_updates_on_one_user_all_count(ms: MemorySystem) -> None:
    results = await asyncio.gather(*(ms.update_context("alice", f"m{i}", "r") for i in range(100)))
    ctx = await ms.get_user_context("alice")
    assert ctx.conversations_count == 100
    assert ctx.version == 100
    assert sorted(r.version for r in results) == list(range(1, 101))
    assert len(await ms.history("alice")) == 100


async def test_thousand_users_ten_updates_each_survive_a_restart(
    make_system: Callable[..., MemorySystem],
) -> None:
    users = [f"user-{i}" for i in range(1000)]

    async def ten(uid: str) -> None:
        for i in range(10):
            await ms.update_context(uid, f"message {i}", "reply")

    async with make_system() as ms:
        await asyncio.gather(*(ten(u) for u in users))
        assert [(await ms.get_user_context(u)).conversations_count for u in users] == [10] * 1000
        stats = await ms.stats()
        assert stats["largest_batch"] > 1, "concurrent commits must be grouped"
    async with make_system() as again:
        assert await again.list_users() == sorted(users)
        for uid in users:
            ctx = await again.get_user_context(uid)
            assert (ctx.conversations_count, ctx.version) == (10, 10)
            assert len(ctx.recent) == 10


async def test_update_context_raises_friendship_and_keeps_recent(
    make_system: Callable[..., MemorySystem],
) -> None:
    # session_gap_minutes = 0: every message is a conversation of its own.
    limits = {"recent_exchanges": 3, "friendship_step": 40}
    async with make_system(limits=limits, retrieval={"session_gap_minutes": 0}) as ms:
        for i in range(5):
            ctx = await ms.update_context(7, f"m{i}", f"r{i}", display_name="Sam")
        assert ctx.user_id == "7"
        assert ctx.friendship_level == 100
        assert [e.message for e in ctx.recent] == ["m2", "m3", "m4"]
        assert ctx.display_name == "Sam"
        assert ctx.last_seen >= ctx.first_seen


async def test_history_and_rollback_round_trip(ms: MemorySystem) -> None:
    await ms.update_context("alice", "hi", "hello")
    v2 = await ms.set_preference("alice", "food", "pizza")
    await ms.set_preference("alice", "food", "soup")
    await ms.set_preference("alice", "music", "jazz")
    rolled = await ms.rollback("alice", v2.version, actor="admin")
    assert rolled.version == 5
    assert dict(rolled.preferences) == {"food": "pizza"}
    assert rolled.copy_with(version=v2.version) == v2
    history = await ms.history("alice")
    assert [h.version for h in history] == [1, 2, 3, 4, 5]
    assert history[-1].actor == "admin"
    assert history[-1].change["op"] == "rollback"
    assert history[1].context == v2
    assert history[3].context.preferences == {"food": "soup", "music": "jazz"}
    assert await ms.get_user_context("alice") == rolled


async def test_set_preference_none_removes(ms: MemorySystem) -> None:
    await ms.set_preference("alice", "food", "pizza")
    ctx = await ms.set_preference("alice", "food", None)
    assert "food" not in ctx.preferences


async def test_rollback_errors_name_the_problem(ms: MemorySystem) -> None:
    with pytest.raises(UserNotFoundError, match="nobody"):
        await ms.rollback("nobody", 1)
    await ms.update_context("alice", "hi", "hello")
    with pytest.raises(VersionNotFoundError, match="versions 1 to 1"):
        await ms.rollback("alice", 9)
    with pytest.raises(UserNotFoundError):
        await ms.history("nobody")


@pytest.mark.parametrize(
    ("user_id", "rule"),
    [
        ("", "must not be empty"),
        ("x" * 129, "at most 128"),
        ("bad\nid", "control characters"),
        ("bad\ud800id", "surrogate"),
        (None, "string or an integer"),
        (True, "bool"),
        (-5, "negative"),
        (3.5, "string or an integer"),
    ],
)
async def test_bad_user_ids_are_rejected_everywhere(ms: MemorySystem, user_id: object, rule: str) -> None:
    calls = [
        ms.get_user_context(user_id),  # type: ignore[arg-type]
        ms.update_context(user_id, "m", "r"),  # type: ignore[arg-type]
        ms.set_preference(user_id, "k", "v"),  # type: ignore[arg-type]
        ms.history(user_id),  # type: ignore[arg-type]
        ms.rollback(user_id, 1),  # type: ignore[arg-type]
        ms.save_memory(user_id, "text"),  # type: ignore[arg-type]
        ms.get_memories(user_id),  # type: ignore[arg-type]
        ms.forget_memory(user_id, 1),  # type: ignore[arg-type]
        ms.forget_user(user_id),  # type: ignore[arg-type]
        ms.retrieve_memory(user_id, "q"),  # type: ignore[arg-type]
        ms.export_user(user_id),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(InvalidInputError, match=rule) as info:
            await call
        assert info.value.field == "user_id"
    assert await ms.list_users() == []


async def test_bad_texts_are_rejected_and_change_nothing(ms: MemorySystem) -> None:
    await ms.update_context("alice", "hi", "hello")
    cases = [
        (ms.update_context("alice", "x" * 4001, "r"), "message", "at most 4000"),
        (ms.update_context("alice", "m", "nul\x00"), "response", "NUL"),
        (ms.update_context("alice", "lone \ud800", "r"), "message", "surrogate"),
        (ms.update_context("alice", 5, "r"), "message", "string"),  # type: ignore[arg-type]
        (ms.set_preference("alice", "", "v"), "preference key", "empty"),
        (ms.set_preference("alice", "k", ["list"]), "preference 'k'", "string, number or bool"),
        (ms.rollback("alice", 0), "version", "at least 1"),
        (ms.rollback("alice", "1"), "version", "integer"),  # type: ignore[arg-type]
        (ms.save_memory("alice", "   "), "text", "empty"),
        (ms.save_memory("alice", "t", kind="dream"), "kind", "must be one of"),
        (ms.save_memory("alice", "t", metadata=[1]), "metadata", "JSON object"),  # type: ignore[arg-type]
        (ms.retrieve_memory("alice", "q", k=0), "k", "at least 1"),
        (ms.retrieve_memory("alice", "q", k=51), "k", "at most 50"),
        (ms.retrieve_memory("alice", ""), "query", "empty"),
        (ms.get_memories("alice", limit=0), "limit", "at least 1"),
        (ms.forget_memory("alice", -1), "memory_id", "at least 1"),
    ]
    for call, field, rule in cases:
        with pytest.raises(InvalidInputError, match=rule) as info:
            await call
        assert info.value.field == field
    ctx = await ms.get_user_context("alice")
    assert (ctx.version, ctx.conversations_count, dict(ctx.preferences)) == (1, 1, {})
    assert len(await ms.get_memories("alice")) == 1


async def test_calls_before_start_and_after_close_raise(
    make_system: Callable[..., MemorySystem],
) -> None:
    system = make_system()
    with pytest.raises(SystemClosedError, match="start"):
        await system.get_user_context("alice")
    await system.start()
    await system.close()
    await system.close()  # idempotent
    with pytest.raises(SystemClosedError, match="closed"):
        await system.update_context("alice", "m", "r")
    with pytest.raises(SystemClosedError):
        await system.start()


async def test_friendship_rises_per_conversation_not_per_message(
    make_system: Callable[..., MemorySystem],
) -> None:
    """Messages minutes apart are one conversation: friendship rises once for all of them."""
    async with make_system(limits={"friendship_step": 5}, retrieval={"session_gap_minutes": 30}) as ms:
        for i in range(6):
            ctx = await ms.update_context("chatty", f"message {i}", "ok")
        assert ctx.conversations_count == 6
        assert ctx.friendship_level == 5
