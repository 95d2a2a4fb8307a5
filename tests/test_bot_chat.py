"""The chat cog through dpytest: who gets answers, no pings, splitting, rate limit, deletion."""

from __future__ import annotations

from pathlib import Path

import discord
import discord.ext.test as dpytest
from discord.ext.test import backend

from bot.app import MemoryBot
from bot.formatting import DISCORD_LIMIT
from memory import HashingEncoder, MemorySystem
from tests.bot_fixtures import (
    BotFactory,
    FakeClock,
    FixedResponder,
    bot_settings,
    dm_channel,
    make_bot,
    member,
    payloads,
    sent_messages,
)

__all__ = ["make_bot"]  # the fixture, imported explicitly


async def test_a_dm_gets_a_reply_and_is_remembered(make_bot: BotFactory) -> None:
    bot = await make_bot()
    channel = await dm_channel(0)
    await dpytest.message("hi, call me Sam", channel=channel, member=member(0))
    [reply] = sent_messages()
    assert isinstance(reply.channel, discord.DMChannel)
    assert "Sam" in reply.content
    ctx = await bot.memory.get_user_context(member(0).id)
    assert ctx.conversations_count == 1
    assert ctx.preferences["name"] == "Sam"


async def test_a_mention_in_a_guild_gets_a_reply(make_bot: BotFactory) -> None:
    bot = await make_bot()
    assert bot.user is not None
    await dpytest.message(f"<@{bot.user.id}> my favourite food is pizza", member=member(0))
    [reply] = sent_messages()
    assert "pizza" in reply.content
    ctx = await bot.memory.get_user_context(member(0).id)
    assert ctx.preferences["favourite food"] == "pizza"
    assert ctx.recent[-1].message == "my favourite food is pizza"  # the mention is stripped


async def test_a_plain_message_in_an_unlisted_channel_is_ignored(make_bot: BotFactory) -> None:
    bot = await make_bot(channels=("chat",))
    await dpytest.message("hello everyone", member=member(0))
    assert sent_messages() == []
    assert (await bot.memory.get_user_context(member(0).id)).conversations_count == 0


async def test_a_listed_channel_gets_replies_by_name(make_bot: BotFactory) -> None:
    await make_bot(channels=("#chat",), text_channels=["general", "chat"])
    chat = next(c for c in dpytest.get_config().channels if c.name == "chat")
    await dpytest.message("hello there", channel=chat, member=member(0))
    [reply] = sent_messages()
    assert reply.channel.id == chat.id


async def test_bot_authors_and_itself_are_ignored(make_bot: BotFactory) -> None:
    bot = await make_bot()
    assert bot.user is not None
    guild = dpytest.get_config().guilds[0]
    other_user = backend.make_user("otherbot", 9)
    other_user.bot = True
    other = backend.make_member(other_user, guild)
    await dpytest.message(f"<@{bot.user.id}> hello bot", member=other)
    me = guild.me
    await dpytest.message(f"<@{bot.user.id}> hello me", member=me)
    channel = await dm_channel(0)
    await dpytest.message("   ", channel=channel, member=member(0))
    assert sent_messages() == []
    assert await bot.memory.list_users() == []


async def test_everyone_in_remembered_text_never_pings(make_bot: BotFactory) -> None:
    bot = await make_bot()
    await dpytest.message("!remember @everyone party at my place", member=member(0))
    await dpytest.message("!recall party", member=member(0))
    await dpytest.message(f"<@{bot.user.id if bot.user else 0}> @everyone party?", member=member(0))
    messages = sent_messages()
    assert any("@everyone party at my place" in m.content for m in messages)
    # dpytest's state drops the bot-wide setting, so this checks the guard on every send
    sent = payloads(bot)
    assert len(sent) == len(messages) == 4  # the recall goes by DM, with a public note
    for payload in sent:  # a DM is no reply, so it has no replied_user to turn off
        assert payload["allowed_mentions"] in ({"parse": [], "replied_user": False}, {"parse": []})


async def test_the_bot_never_pings_and_reads_message_content(tmp_path: Path) -> None:
    settings = bot_settings()
    memory = MemorySystem(tmp_path, settings=settings, encoder=HashingEncoder())
    bot = MemoryBot(memory, settings)
    assert bot.allowed_mentions is not None
    assert dict(bot.allowed_mentions.to_dict()) == {"parse": []}
    assert bot.intents.message_content
    await bot.close()  # never started: closing is still clean


async def test_a_5000_character_reply_is_split(make_bot: BotFactory) -> None:
    text = " ".join(f"word{i:04d}" for i in range(556))  # 5,003 characters
    assert len(text) > 5000
    await make_bot(responder=FixedResponder(text))
    channel = await dm_channel(0)
    await dpytest.message("tell me a long story", channel=channel, member=member(0))
    parts = sent_messages()
    assert len(parts) == 3
    assert all(0 < len(m.content) <= DISCORD_LIMIT for m in parts)
    assert " ".join(m.content for m in parts).split() == text.split()


async def test_a_long_message_gets_a_friendly_reply_and_is_not_stored(
    make_bot: BotFactory,
) -> None:
    bot = await make_bot()
    channel = await dm_channel(0)
    await dpytest.message("x" * 4500, channel=channel, member=member(0))
    [reply] = sent_messages()
    assert "4,000 characters" in reply.content
    assert (await bot.memory.get_user_context(member(0).id)).conversations_count == 0


async def test_the_rate_limit_answers_once_then_recovers(make_bot: BotFactory) -> None:
    clock = FakeClock()
    bot = await make_bot(clock=clock, rate_limit_messages=2, rate_limit_seconds=60)
    channel = await dm_channel(0)
    for text in ("one", "two", "three", "four"):
        await dpytest.message(text, channel=channel, member=member(0))
    replies = [m.content for m in sent_messages()]
    assert len(replies) == 3  # two answers, one friendly warning, then silence
    assert "faster than I can think" in replies[2]
    clock.now += 61
    await dpytest.message("five", channel=channel, member=member(0))
    [reply] = sent_messages()
    assert "faster" not in reply.content
    ctx = await bot.memory.get_user_context(member(0).id)
    assert [e.message for e in ctx.recent] == ["one", "two", "five"]
    # another person is not limited by the first one's messages
    clock.now += 0.5
    await dpytest.message("hello", channel=await dm_channel(1), member=member(1))
    assert len(sent_messages()) == 1


async def test_deleting_a_message_forgets_its_memory(make_bot: BotFactory) -> None:
    bot = await make_bot()
    channel = await dm_channel(0)
    kept = await dpytest.message("my cat is called Miso", channel=channel, member=member(0))
    deleted = await dpytest.message("my password hint is blue", channel=channel, member=member(0))
    memories = await bot.memory.get_memories(member(0).id)
    assert {m.source_id for m in memories} == {str(kept.id), str(deleted.id)}
    backend.delete_message(deleted)
    await dpytest.run_all_events()
    memories = await bot.memory.get_memories(member(0).id)
    assert [m.source_id for m in memories] == [str(kept.id)]
    results = await bot.memory.retrieve_memory(member(0).id, "password hint blue", 5)
    assert all("password" not in r.memory.text for r in results)


async def test_close_saves_the_memory(make_bot: BotFactory, tmp_path: Path) -> None:
    bot = await make_bot(data_dir=tmp_path / "kept")
    channel = await dm_channel(0)
    await dpytest.message("I love jazz", channel=channel, member=member(0))
    bot.ws = None  # type: ignore[assignment]  # dpytest's fake websocket has no socket
    await bot.close()
    assert (tmp_path / "kept" / "contexts.json").is_file()
    reopened = MemorySystem(tmp_path / "kept", settings=bot_settings(), encoder=HashingEncoder())
    async with reopened:
        ctx = await reopened.get_user_context(member(0).id)
    assert ctx.conversations_count == 1
    assert ctx.preferences["likes"] == "jazz"
