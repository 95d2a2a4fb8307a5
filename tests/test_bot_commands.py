"""The memory commands through dpytest; each acts on the caller's own data only."""

from __future__ import annotations

import json
from pathlib import Path

import discord
import discord.ext.test as dpytest
import pytest
from discord.ext import commands
from discord.ext.test import backend

from tests.bot_fixtures import BotFactory, FakeClock, dm_channel, make_bot, member, sent_messages

__all__ = ["make_bot"]  # the fixture, imported explicitly


async def say(text: str, who: int = 0) -> str:
    """Send ``text`` as member ``who`` in the guild channel; the bot's replies, joined."""
    await dpytest.message(text, member=member(who))
    return "\n".join(m.content for m in sent_messages())


async def test_remember_stores_a_note_from_the_message(make_bot: BotFactory) -> None:
    bot = await make_bot()
    message = await dpytest.message("!remember my cat is called Miso", member=member(0))
    [reply] = sent_messages()
    [memory] = await bot.memory.get_memories(member(0).id)
    assert f"#{memory.id}" in reply.content
    assert (memory.text, memory.kind, memory.source_id) == (
        "my cat is called Miso",
        "note",
        str(message.id),
    )
    backend.delete_message(message)  # deleting the command message forgets the note too
    await dpytest.run_all_events()
    assert await bot.memory.get_memories(member(0).id) == []


async def test_remember_without_text_gets_usage(make_bot: BotFactory) -> None:
    await make_bot()
    with pytest.raises(commands.MissingRequiredArgument):
        await dpytest.message("!remember", member=member(0))
    [reply] = sent_messages()
    assert "Usage: `!remember <text>`" in reply.content


async def test_recall_finds_only_the_callers_memories(make_bot: BotFactory) -> None:
    bot = await make_bot()
    await bot.memory.save_memory(member(0).id, "alice's secret: the treasure is under the oak")
    await bot.memory.save_memory(member(1).id, "bob likes the oak tree too")
    alice = await say("!recall treasure oak", 0)
    assert "treasure is under the oak" in alice
    bob = await say("!recall treasure oak", 1)
    assert "treasure" not in bob
    assert "bob likes the oak tree" in bob


async def test_recall_of_nonsense_quotes_no_memory(make_bot: BotFactory) -> None:
    bot = await make_bot()
    for text in ("my cat is called Miso", "I work at the bakery", "my sister lives in Lisbon"):
        await bot.memory.save_memory(member(0).id, text)
    assert "don't remember anything" in await say("!recall zzzzqqq", 0)
    assert "Miso" in await say("!recall cat", 0)


async def test_recall_with_nothing_stored_says_so(make_bot: BotFactory) -> None:
    await make_bot()
    assert "don't remember anything" in await say("!recall anything")


async def test_forget_removes_one_of_the_callers_memories(make_bot: BotFactory) -> None:
    bot = await make_bot()
    memory = await bot.memory.save_memory(member(0).id, "forget me")
    reply = await say(f"!forget {memory.id}")
    assert f"#{memory.id} is gone" in reply
    assert await bot.memory.get_memories(member(0).id) == []


async def test_nobody_can_forget_another_persons_memory(make_bot: BotFactory) -> None:
    bot = await make_bot()
    memory = await bot.memory.save_memory(member(0).id, "alice's memory")
    reply = await say(f"!forget {memory.id}", 1)
    assert f"couldn't find memory #{memory.id} among yours" in reply
    assert [m.id for m in await bot.memory.get_memories(member(0).id)] == [memory.id]


async def test_forget_rejects_a_non_number(make_bot: BotFactory) -> None:
    await make_bot()
    assert "takes a memory id" in await say("!forget yesterday")


async def test_forget_all_needs_a_timely_confirmation(make_bot: BotFactory) -> None:
    clock = FakeClock()
    bot = await make_bot(clock=clock)
    await bot.memory.save_memory(member(0).id, "alice's memory")
    await bot.memory.save_memory(member(1).id, "bob's memory")
    assert "!forget all confirm" in await say("!forget all confirm")  # no request yet: asks
    assert len(await bot.memory.get_memories(member(0).id)) == 1
    assert "within 60 seconds" in await say("!forget all")
    clock.now += 61
    assert "To go ahead" in await say("!forget all confirm")  # too late: asks again
    assert len(await bot.memory.get_memories(member(0).id)) == 1
    assert "forgotten everything" in await say("!forget all confirm")
    assert await bot.memory.get_memories(member(0).id) == []
    assert await bot.memory.list_users() == []
    assert len(await bot.memory.get_memories(member(1).id)) == 1  # bob is untouched


async def test_profile_shows_count_friendship_and_preferences(make_bot: BotFactory) -> None:
    await make_bot()
    channel = await dm_channel(0)
    for text in ("hi, call me Sam", "my favourite food is pizza"):
        await dpytest.message(text, channel=channel, member=member(0))
    sent_messages()
    reply = await say("!profile")
    assert "Profile of Sam" in reply
    assert "Conversations: 2" in reply
    assert "Friendship: 2/100" in reply  # two messages, one conversation
    assert "Memories: 2" in reply
    assert "- favourite food: pizza" in reply
    other = await say("!profile", 1)
    assert "pizza" not in other and "Conversations: 0" in other


async def test_export_in_a_dm_attaches_the_callers_data(
    make_bot: BotFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # dpytest writes sent attachments to the working folder
    bot = await make_bot()
    await bot.memory.save_memory(member(0).id, "alice's note")
    await bot.memory.save_memory(member(1).id, "bob's note")
    channel = await dm_channel(0)
    await dpytest.message("!export", channel=channel, member=member(0))
    [reply] = sent_messages()
    [attachment] = reply.attachments
    assert attachment.filename == f"memory-export-{member(0).id}.json"
    data = json.loads(await attachment.read())
    assert data["user_id"] == str(member(0).id)
    assert [m["text"] for m in data["memories"]] == ["alice's note"]


async def test_export_in_a_guild_goes_to_dms(
    make_bot: BotFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    bot = await make_bot()
    await bot.memory.save_memory(member(0).id, "alice's note")
    await dpytest.message("!export", member=member(0))
    private, public = sent_messages()
    assert private.attachments and private.channel.type is discord.ChannelType.private
    assert public.content == "I've sent you a DM." and not public.attachments


async def test_export_with_nothing_stored_is_a_friendly_reply(make_bot: BotFactory) -> None:
    bot = await make_bot()
    await bot.memory.save_memory(member(0).id, "alice's note")
    assert "don't have anything stored about you" in await say("!export", 1)


async def test_commands_share_the_rate_limit(make_bot: BotFactory) -> None:
    await make_bot(clock=FakeClock(), rate_limit_messages=1, rate_limit_seconds=60)
    assert "Profile of" in await say("!profile")
    with pytest.raises(commands.CheckFailure):
        await dpytest.message("!profile", member=member(0))
    assert "faster than I can think" in "\n".join(m.content for m in sent_messages())
