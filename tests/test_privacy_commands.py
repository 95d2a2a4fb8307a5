"""Privacy scopes through the bot (dpytest, real discord.py objects, a real MemorySystem):
what is said in a DM stays in the DM, whatever shows memories answers privately, and the
person's own controls (memory off/on/list/share, privacy) and edits, leaving and retention work.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord
import discord.ext.test as dpytest
import discord.http as dhttp
import orjson
import pytest
from discord import app_commands
from discord.ext.test import factories as facts

from bot.actions import MemoryActions
from bot.app import MemoryBot
from bot.cogs.memory_commands import MemoryCommands
from bot.cogs.privacy import PrivacyCog
from bot.pipeline import MEMORY_OFF_NOTE, ChatPipeline
from bot.privacy import Place
from bot.responder import ReplyRequest, TemplateResponder
from memory import HashingEncoder, MemorySystem
from tests.bot_fixtures import (
    BotFactory,
    RecordingHttp,
    bot_settings,
    dm_channel,
    make_bot,
    member,
    payloads,
    sent_messages,
)
from tests.test_erasure import folder_bytes

__all__ = ["make_bot"]  # the fixture, imported explicitly

CONFIDENCE = "I'm recovering from depression and my therapist is Dr Lee"
PRIVATE_WORDS = ("depression", "Dr Lee", "recovering")


pytestmark = pytest.mark.both_backends  # one behaviour suite, both storage backends


class RecordingTemplate(TemplateResponder):
    """The offline responder, keeping every request it was given (what a reply could use)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[ReplyRequest] = []

    async def reply(self, request: ReplyRequest) -> str:
        self.requests.append(request)
        return await super().reply(request)


def guild() -> discord.Guild:
    return dpytest.get_config().guilds[0]


def mention(bot: MemoryBot, text: str) -> str:
    assert bot.user is not None
    return f"<@{bot.user.id}> {text}"


async def in_dm(text: str, who: int = 0) -> list[discord.Message]:
    await dpytest.message(text, channel=await dm_channel(who), member=member(who))
    return sent_messages()


async def in_guild(text: str, who: int = 0) -> list[discord.Message]:
    await dpytest.message(text, member=member(who))
    return sent_messages()


async def test_a_dm_confidence_never_appears_in_a_guild_reply(make_bot: BotFactory) -> None:
    responder = RecordingTemplate()
    bot = await make_bot(responder=responder)
    await in_dm(CONFIDENCE)
    [reply] = await in_guild(mention(bot, "my therapist appointment is today, wish me luck"))
    assert reply.channel.type is discord.ChannelType.text
    assert not any(word in reply.content for word in PRIVATE_WORDS), reply.content
    guild_request = responder.requests[-1]
    assert [m.memory.scope for m in guild_request.memories] == []  # nothing of the guild yet
    assert [e.scope for e in guild_request.context.recent] == []
    # The same words in the DM do find it: the guild reply was filtered, not unlucky.
    await in_dm("my therapist appointment is today, wish me luck")
    assert any("Dr Lee" in m.memory.text for m in responder.requests[-1].memories)
    # And a later guild reply still sees only the guild's own exchange.
    await in_guild(mention(bot, "how did my therapist appointment go?"))
    later = responder.requests[-1]
    assert {m.memory.scope for m in later.memories} == {f"guild:{guild().id}"}
    assert all(e.scope == f"guild:{guild().id}" for e in later.context.recent)


async def test_recall_in_a_guild_answers_by_dm_with_a_public_note(make_bot: BotFactory) -> None:
    await make_bot()
    await in_dm(CONFIDENCE)
    private, public = await in_guild("!recall therapist")
    assert private.channel.type is discord.ChannelType.private and "Dr Lee" in private.content
    assert public.channel.type is discord.ChannelType.text
    assert public.content == "I've sent you a DM."
    [in_place] = await in_dm("!recall therapist")  # in a DM the answer stays there
    assert in_place.channel.type is discord.ChannelType.private and "Dr Lee" in in_place.content


async def test_memory_list_shows_ids_dates_and_places_privately(make_bot: BotFactory) -> None:
    bot = await make_bot()
    note = await bot.memory.save_memory(member(0).id, "my cat is Miso", scope=f"guild:{guild().id}")
    await in_dm(CONFIDENCE)
    private, public = await in_guild("!memory list")
    assert public.content == "I've sent you a DM." and "Miso" not in public.content
    lines = private.content.splitlines()
    assert lines[0] == "What I have stored about you (page 1):"
    assert lines[1] == f"#{note.id} (note, {note.created_at:%Y-%m-%d}, server {guild().id}): my cat is Miso"
    assert lines[2].endswith(f"DM): alice: {CONFIDENCE} Bot: " + lines[2].split(" Bot: ", 1)[1])
    for _ in range(10):
        await bot.memory.save_memory(member(0).id, "filler")
    first = (await in_dm("!memory list"))[0].content
    assert "More: `memory list 2`" in first
    second = (await in_dm("!memory 2"))[0].content
    assert second.startswith("What I have stored about you (page 2):") and "filler" in second
    assert (await in_dm("!memory list 9"))[0].content == "There is no page 9."


async def test_memory_off_stores_nothing_of_later_messages(make_bot: BotFactory) -> None:
    bot = await make_bot()
    await in_dm("hello there")
    [off] = await in_dm("!memory off")
    assert "Memory is off" in off.content
    before = (await bot.memory.get_memories(member(0).id), len(await bot.memory.history(member(0).id)))
    secret = "Zanzibarian quokkas adore marzipan"
    [first] = await in_dm(f"I love marzipan. {secret}")
    [second] = await in_guild(mention(bot, f"psst: {secret}"))
    assert first.content.endswith(MEMORY_OFF_NOTE) and MEMORY_OFF_NOTE not in second.content  # once
    [refused] = await in_dm("!remember my pin is 4242")
    assert "Memory is off" in refused.content
    uid = member(0).id
    assert (await bot.memory.get_memories(uid), len(await bot.memory.history(uid))) == before
    ctx = await bot.memory.get_user_context(uid)
    assert [e.message for e in ctx.recent] == ["hello there"]
    assert "likes" not in ctx.preferences  # nothing learned either
    assert all(b not in folder_bytes(bot.memory.data_dir) for b in (b"quokka", b"marzipan", b"4242"))
    [on] = await in_dm("!memory on")
    assert "Memory is on" in on.content
    [stored] = await in_dm("remember this one")
    assert MEMORY_OFF_NOTE not in stored.content
    assert [e.message for e in (await bot.memory.get_user_context(uid)).recent][-1] == "remember this one"


async def test_an_edited_message_updates_its_memory_everywhere(make_bot: BotFactory) -> None:
    bot = await make_bot()
    dm = await dm_channel(0)
    said = await dpytest.message("I live in Zanzibarville", channel=dm, member=member(0))
    note = await dpytest.message("!remember my cat is Miso", member=member(0))
    sent_messages()
    for message, content in ((said, "I live in Quokkatown"), (note, "!remember my cat is Mochi")):
        data: Any = {**facts.dict_from_message(message), "content": content}  # a gateway update
        edited = discord.Message(state=message._state, channel=message.channel, data=data)
        bot.dispatch("raw_message_edit", discord.RawMessageUpdateEvent(data, edited))
    await _settle(bot)
    uid = member(0).id
    texts = [m.text for m in await bot.memory.get_memories(uid)]
    assert texts[0].startswith("alice: I live in Quokkatown\nBot: ") and texts[1] == "my cat is Mochi"
    ctx = await bot.memory.get_user_context(uid)
    assert [e.message for e in ctx.recent] == ["I live in Quokkatown"]
    history = orjson.dumps([e.to_dict() for e in await bot.memory.history(uid)]).decode()
    assert "Zanzibarville" not in history and "Miso" not in history
    assert b"zanzibarville" not in folder_bytes(bot.memory.data_dir)


async def test_leaving_a_guild_forgets_it_and_a_member_leaving_only_when_asked(
    make_bot: BotFactory,
) -> None:
    bot = await make_bot(forget_member_on_leave=True)
    scope = f"guild:{guild().id}"
    await in_guild(mention(bot, "a guild thing"), 0)
    await in_guild(mention(bot, "another guild thing"), 1)
    await in_dm("a private thing", 0)
    alice, bob = member(0), member(1)
    user = bot.get_user(bob.id)
    assert user is not None
    remove = discord.RawMemberRemoveEvent({"guild_id": str(guild().id), "user": {}}, user)  # type: ignore[typeddict-item]
    bot.dispatch("raw_member_remove", remove)
    await dpytest.run_all_events()
    await _settle(bot)
    assert await bot.memory.get_memories(bob.id) == []
    assert [m.scope for m in await bot.memory.get_memories(alice.id)] == [scope, "dm"]
    bot.dispatch("guild_remove", guild())
    await _settle(bot)
    assert [m.scope for m in await bot.memory.get_memories(alice.id)] == ["dm"]
    assert all(e.scope == "dm" for e in (await bot.memory.get_user_context(alice.id)).recent)


async def _settle(bot: MemoryBot) -> None:
    """Wait for the listeners dispatched as tasks (discord.py schedules each one)."""
    await dpytest.run_all_events()
    pending = [t for t in asyncio.all_tasks() if t.get_name().startswith("discord.py: on_")]
    await asyncio.gather(*pending)


async def test_a_member_leaving_keeps_their_memories_by_default(make_bot: BotFactory) -> None:
    bot = await make_bot()
    await in_guild(mention(bot, "a guild thing"), 1)
    bob = member(1)
    user = bot.get_user(bob.id)
    assert user is not None
    remove = discord.RawMemberRemoveEvent({"guild_id": str(guild().id), "user": {}}, user)  # type: ignore[typeddict-item]
    bot.dispatch("raw_member_remove", remove)
    await _settle(bot)
    assert len(await bot.memory.get_memories(bob.id)) == 1


async def test_retention_prunes_old_exchanges(make_bot: BotFactory) -> None:
    bot = await make_bot(retention_days=1)
    await in_dm("an old thing")
    await bot.memory.save_memory(member(0).id, "a note")
    cog: Any = bot.get_cog("PrivacyCog")  # loaded as an extension: its own module object
    assert type(cog).__name__ == PrivacyCog.__name__ and cog.retention.is_running()
    assert await cog.prune() == 0  # nothing is a day old yet
    assert await cog.prune(now=datetime.now(UTC) + timedelta(days=1, seconds=1)) == 1
    assert [m.text for m in await bot.memory.get_memories(member(0).id)] == ["a note"]
    assert (await bot.memory.get_user_context(member(0).id)).recent == ()


@pytest.mark.parametrize("closed", [False, True])
async def test_sharing_across_guilds_is_opt_in_never_includes_dms_and_can_be_closed(
    tmp_path: Path, closed: bool
) -> None:
    settings = bot_settings(no_cross_guild=["1"] if closed else [])
    async with MemorySystem(tmp_path, settings=settings, encoder=HashingEncoder()) as ms:
        responder = RecordingTemplate()
        pipeline = ChatPipeline(ms, responder)
        actions = MemoryActions(ms)
        await pipeline.handle("ana", "Ana", "my parrot Kiwi talks a lot", place=Place(1, 10))
        await pipeline.handle("ana", "Ana", "my parrot is secretly ill", place=Place(None, 99))

        async def seen_in(guild_id: int) -> set[str]:
            await pipeline.handle("ana", "Ana", "how is my parrot?", place=Place(guild_id, 20))
            return {m.memory.scope for m in responder.requests[-1].memories}

        assert await seen_in(2) <= {"guild:2"}
        await actions.set_share("ana", on=True)
        assert await seen_in(2) == ({"guild:2"} if closed else {"guild:1", "guild:2"})
        assert await seen_in(1) == ({"guild:1"} if closed else {"guild:1", "guild:2"})
        await actions.set_share("ana", on=False)
        assert await seen_in(2) == {"guild:2"}
        assert "privacy" not in await actions.profile("ana")  # the switches are no preferences


async def test_privacy_states_storage_retention_controls_and_the_llm(make_bot: BotFactory) -> None:
    await make_bot(retention_days=30)
    [statement] = await in_guild("!privacy")
    text = statement.content
    for part in ("for 30 days", "memory off", "forget all", "export", "stays in DMs", "nothing is sent"):
        assert part in text, part


def test_the_memory_group_and_privacy_are_slash_commands(tmp_path: Path) -> None:
    async def tree_names() -> dict[str, set[str]]:
        settings = bot_settings()
        bot = MemoryBot(MemorySystem(tmp_path, settings=settings, encoder=HashingEncoder()), settings)
        await bot.add_cog(MemoryCommands(bot))
        out: dict[str, set[str]] = {}
        for command in bot.tree.get_commands():
            subs = command.commands if isinstance(command, app_commands.Group) else []
            out[command.name] = {c.name for c in subs}
        return out

    names = asyncio.run(tree_names())
    assert names["memory"] == {"list", "on", "off", "share"}
    assert "privacy" in names


async def test_a_preference_told_in_a_dm_is_not_used_in_a_guild(make_bot: BotFactory) -> None:
    responder = RecordingTemplate()
    bot = await make_bot(responder=responder)
    await in_dm("I love marzipan")
    await in_guild(mention(bot, "I love jazz"))
    uid = member(0).id
    assert (await bot.memory.get_user_context(uid)).preferences["likes"] == "marzipan, jazz"
    [reply] = await in_guild(mention(bot, "what do you know about me?"))
    assert "marzipan" not in reply.content and "likes" not in responder.requests[-1].context.preferences
    await in_dm("what do you know about me?")
    assert "marzipan" in responder.requests[-1].context.preferences["likes"]
    # A list a DM touched stays private as a whole (it is one value): too little beats too much.
    await in_guild(mention(bot, "I love rock"))
    assert "likes" not in responder.requests[-1].context.preferences
    # A preference only ever learned in a guild is used there.
    await in_guild(mention(bot, "I hate mondays"))
    await in_guild(mention(bot, "what do you know about me?"))
    assert responder.requests[-1].context.preferences["dislikes"] == "mondays"
    profile = (await in_dm("!profile"))[0].content
    assert "marzipan" in profile and "privacy" not in profile  # in private: all, no switches


class DmRefusingHttp(RecordingHttp):
    """dpytest's HTTP client for a person whose DMs are closed: Discord answers 403."""

    def __init__(self, loop: asyncio.AbstractEventLoop, dm_id: int) -> None:
        super().__init__(loop)
        self.dm_id = dm_id

    async def send_message(self, channel_id: str | int, *, params: dhttp.MultipartParameters) -> Any:
        if int(channel_id) == self.dm_id:
            raise discord.Forbidden(SimpleNamespace(status=403, reason="Forbidden"), "Cannot DM this user")
        # dpytest reads ``channel`` from its caller's caller's frame (see RecordingHttp).
        channel = sys._getframe(1).f_locals.get("channel")  # noqa: F841
        return await super().send_message(channel_id, params=params)


async def test_closed_dms_get_a_public_hint_and_no_memory_text(make_bot: BotFactory) -> None:
    bot = await make_bot()
    await bot.memory.save_memory(member(0).id, "the treasure is under the oak")
    http = DmRefusingHttp(asyncio.get_running_loop(), (await dm_channel(0)).id)
    http.state = bot.http.state  # type: ignore[attr-defined]  # as bot_fixtures installs its own
    bot.http = http
    bot._connection.http = http
    [public] = await in_guild("!recall treasure")
    assert public.content == "I couldn't DM you; allow DMs from me, or use the slash command."
    assert [p["content"] for p in payloads(bot)] == [public.content]  # nothing else went out
