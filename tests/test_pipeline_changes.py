"""One chat message is one change: its preferences, name and exchange in one version and commit,
computed under the user's lock, so concurrent messages of one person never undo each other."""

from __future__ import annotations

import asyncio

import pytest

from bot.pipeline import ChatPipeline
from bot.responder import TemplateResponder
from memory import InvalidInputError, MemorySystem

pytestmark = pytest.mark.both_backends  # one behaviour suite, both storage backends


async def test_two_quick_messages_keep_both_preferences(ms: MemorySystem) -> None:
    pipeline = ChatPipeline(ms, TemplateResponder())
    replies = await asyncio.gather(
        pipeline.handle("u1", "Ann", "I love jazz"),
        pipeline.handle("u1", "Ann", "I love rock"),
    )
    assert all("Noted" in reply or "jazz" in reply or "rock" in reply for reply in replies)
    ctx = await ms.get_user_context("u1")
    assert sorted(ctx.preferences["likes"].split(", ")) == ["jazz", "rock"]
    assert ctx.version == ctx.conversations_count == 2  # one version per message
    history = await ms.history("u1")
    assert [entry.change["op"] for entry in history] == ["update_context", "update_context"]


async def test_many_concurrent_messages_each_count_once(ms: MemorySystem) -> None:
    pipeline = ChatPipeline(ms, TemplateResponder())
    foods = [f"food{n}" for n in range(8)]
    await asyncio.gather(*(pipeline.handle("u2", "Bo", f"I like {food}") for food in foods))
    ctx = await ms.get_user_context("u2")
    assert sorted(ctx.preferences["likes"].split(", ")) == sorted(foods)
    assert ctx.version == len(foods)


async def test_update_context_takes_changes_or_a_function_of_the_current_preferences(
    ms: MemorySystem,
) -> None:
    ctx = await ms.update_context("u3", "hi", "hello", preferences={"food": "pizza"}, display_name="Cy")
    assert dict(ctx.preferences) == {"food": "pizza"} and ctx.display_name == "Cy" and ctx.version == 1
    ctx = await ms.update_context(
        "u3", "more", "ok", preferences=lambda current: {"food": None, "seen": str(len(current))}
    )
    assert dict(ctx.preferences) == {"seen": "1"} and ctx.version == 2
    change = (await ms.history("u3"))[-1].change
    assert change["preferences"] == {"food": ("pizza", None), "seen": (None, "1")}


async def test_bad_preference_changes_change_nothing(ms: MemorySystem) -> None:
    await ms.update_context("u4", "hi", "hello")
    too_many = {f"k{n}": "v" for n in range(ms.settings.limits.max_preferences + 1)}
    for bad in (too_many, {"": "x"}, {"k": ["a list"]}, "food=pizza"):
        with pytest.raises(InvalidInputError):
            await ms.update_context("u4", "again", "ok", preferences=bad)  # type: ignore[arg-type]
    ctx = await ms.get_user_context("u4")
    assert ctx.version == 1 and not ctx.preferences
