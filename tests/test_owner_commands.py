"""Owner commands (forget-user, block, unblock, stats, sync), help, and replies as replies."""

from __future__ import annotations

import discord.ext.test as dpytest
import orjson
import pytest
from discord import app_commands
from discord.ext import commands

from bot.app import owner_ids
from bot.blocklist import FILENAME, BlockList
from memory import ConfigError, UserNotFoundError
from tests.bot_fixtures import BotFactory, dm_channel, make_bot, member, payloads, sent_messages

__all__ = ["make_bot"]  # the fixture, imported explicitly
OWNER_COMMANDS = ("forget-user", "block", "unblock", "stats", "sync")
MEMORY_COMMANDS = ("remember", "recall", "forget", "profile", "export", "help", "memory", "privacy")


async def say(text: str, who: int) -> str:
    await dpytest.message(text, member=member(who))
    return "\n".join(m.content for m in sent_messages())


@pytest.mark.parametrize("command", OWNER_COMMANDS)
async def test_owner_commands_refuse_a_non_owner(make_bot: BotFactory, command: str) -> None:
    bot = await make_bot()
    bot.owner_ids = {member(0).id}
    await bot.memory.save_memory(member(0).id, "alice's note")
    with pytest.raises(commands.NotOwner):  # dpytest re-raises what the error handler answered
        await dpytest.message(f"!{command} {member(0).id}", member=member(1))
    reply = "\n".join(m.content for m in sent_messages())
    assert reply == "Only the bot's owner can use that command."
    assert [m.text for m in await bot.memory.get_memories(member(0).id)] == ["alice's note"]
    assert member(0).id not in bot.blocked and len(bot.blocked) == 0


async def test_the_owner_forgets_a_user_by_id(make_bot: BotFactory) -> None:
    bot = await make_bot()
    bot.owner_ids = {member(0).id}
    bob = member(1).id
    await bot.memory.update_context(bob, "I love jazz", "Noted")
    await bot.memory.save_memory(bob, "bob's secret")
    assert await say(f"!forget-user {bob}", 0) == f"Forgot everything about user {bob}."
    assert await bot.memory.get_memories(bob) == []
    with pytest.raises(UserNotFoundError):
        await bot.memory.history(bob)
    [erasure] = await bot.memory.erasures(bob)
    assert erasure.actor == f"owner:{member(0).id}"
    assert await say(f"!forget-user {bob}", 0) == f"I had nothing stored about user {bob}."


async def test_a_blocked_user_is_neither_answered_nor_remembered_until_unblocked(
    make_bot: BotFactory,
) -> None:
    bot = await make_bot()
    bot.owner_ids = {member(0).id}
    bob = member(1).id
    assert await say(f"!block {bob}", 0) == f"Blocked user {bob}."
    dm = await dm_channel(1)
    await dpytest.message("hi, remember that I love jazz", channel=dm, member=member(1))
    await dpytest.message("!remember my pin is 1234", channel=dm, member=member(1))
    assert sent_messages() == []
    assert await bot.memory.get_memories(bob) == []
    path = bot.memory.data_dir / FILENAME
    assert orjson.loads(path.read_bytes()) == [str(bob)]
    reloaded = BlockList()  # what the next start reads
    await reloaded.load(path)
    assert bob in reloaded
    assert await say(f"!unblock {bob}", 0) == f"Unblocked user {bob}."
    await dpytest.message("hi again", channel=dm, member=member(1))
    assert len(sent_messages()) == 1
    assert orjson.loads(path.read_bytes()) == []


async def test_stats_shows_the_health_and_the_counts(make_bot: BotFactory) -> None:
    bot = await make_bot()
    bot.owner_ids = {member(0).id}
    await bot.memory.save_memory(member(1).id, "a note")
    reply = await say("!stats", 0)
    lines = reply.splitlines()
    # dpytest never marks the client ready, so the gateway is reported as not connected
    assert lines[0] == "Health: Discord gateway: not connected yet (or reconnecting)"
    assert "memories: 1" in lines and "blocked users: 0" in lines


async def test_help_describes_every_command_and_owner_commands_only_for_the_owner(
    make_bot: BotFactory,
) -> None:
    bot = await make_bot()
    bot.owner_ids = {member(0).id}
    for command in bot.commands:
        assert (command.description or command.short_doc).strip(), f"{command.name} has no description"
    for app_command in bot.tree.get_commands():
        assert not isinstance(app_command, app_commands.ContextMenu)
        assert app_command.description not in ("", "…"), app_command.name
    assert {c.name for c in bot.tree.get_commands()} == set(MEMORY_COMMANDS)  # owner ones stay prefix-only
    everyone = await say("!help", 1)
    owner = await say("!help", 0)
    for name in MEMORY_COMMANDS:
        [line] = [line for line in everyone.splitlines() if line.startswith(f"`!{name}")]
        assert line.split("`: ", 1)[1].strip(), line
    assert not any(f"`!{name}" in everyone for name in OWNER_COMMANDS)
    assert all(f"`!{name}" in owner for name in OWNER_COMMANDS)
    assert "`!forget-user <user_id>`: Forget everything about a user by id" in owner


async def test_replies_are_sent_as_replies_without_pinging(make_bot: BotFactory) -> None:
    bot = await make_bot()
    chat = await dpytest.message(f"<@{bot.user.id if bot.user else 0}> hello bot", member=member(0))
    command = await dpytest.message("!profile", member=member(0))
    assert len(sent_messages()) == 3  # the profile itself goes by DM
    chat_reply, _, command_reply = payloads(bot)
    assert chat_reply["message_reference"]["message_id"] == chat.id
    assert command_reply["message_reference"]["message_id"] == command.id
    for payload in (chat_reply, command_reply):
        assert payload["allowed_mentions"] == {"parse": [], "replied_user": False}


def test_owner_ids_setting_names_a_bad_value() -> None:
    assert owner_ids(("123", " 456 ")) == {123, 456}
    with pytest.raises(ConfigError, match=r"bot.owner_ids.*'alice' is not a Discord user id"):
        owner_ids(("123", "alice"))
