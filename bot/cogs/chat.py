"""The chat cog: turns a Discord message into one ChatPipeline call and sends the reply."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.formatting import friendly_error, split_message
from bot.metrics import Timer
from bot.privacy import Place
from bot.rate_limit import rate_limited_reply
from bot.responder import reply_guild
from memory import MemoryBotError

if TYPE_CHECKING:
    from bot.app import MemoryBot

log = logging.getLogger(__name__)
NO_PINGS = discord.AllowedMentions.none()


class ChatCog(commands.Cog):
    """Answers in DMs, when mentioned, and in the configured channels."""

    def __init__(self, bot: MemoryBot) -> None:
        self.bot = bot
        self.channels = frozenset(c.strip().lstrip("#").lower() for c in bot.bot_settings.channels)

    def addressed(self, message: discord.Message) -> bool:
        """Whether the bot should answer: never bots (itself included) or empty messages."""
        me = self.bot.user
        if message.author.bot or me is None or message.author.id == me.id:
            return False
        if message.author.id in self.bot.blocked:
            return False
        if not message.content.strip():
            return False
        if message.guild is None or me in message.mentions:
            return True
        channel = message.channel
        name = getattr(channel, "name", None)
        return str(channel.id) in self.channels or (isinstance(name, str) and name.lower() in self.channels)

    def text_of(self, message: discord.Message) -> str:
        me = self.bot.user
        text = message.content
        if me is not None:
            text = text.replace(f"<@{me.id}>", " ").replace(f"<@!{me.id}>", " ")
        return text.strip()

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if not self.addressed(message):
            return
        if (await self.bot.get_context(message)).valid:
            return  # a command: the command handler answers it
        text = self.text_of(message)
        if not text:
            return
        decision = self.bot.rate_limiter.hit(message.author.id)
        if not decision.allowed:
            log.info("rate limit: user %s, retry in %.1fs", message.author.id, decision.retry_after)
            if decision.notify:
                await message.channel.send(rate_limited_reply(decision), allowed_mentions=NO_PINGS)
            return
        guild = reply_guild.set(message.guild.id if message.guild is not None else None)
        try:
            async with message.channel.typing():
                with Timer(self.bot.metrics.reply_seconds.observe):
                    reply = await self.bot.pipeline.handle(
                        message.author.id,
                        message.author.display_name,
                        text,
                        source_id=str(message.id),
                        place=Place(message.guild.id if message.guild else None, message.channel.id),
                    )
        except MemoryBotError as exc:
            log.warning("could not answer message %s: %s", message.id, exc, exc_info=True)
            reply = friendly_error(exc)
        finally:
            reply_guild.reset(guild)
        for index, part in enumerate(split_message(reply)):
            # The first part answers the message (a reply, without pinging); the rest follow it.
            extra: dict[str, Any] = {"reference": message, "mention_author": False} if index == 0 else {}
            await message.channel.send(part, allowed_mentions=NO_PINGS, **extra)

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self._forget_messages([payload.message_id])

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        await self._forget_messages(sorted(payload.message_ids))

    async def _forget_messages(self, message_ids: list[int]) -> None:
        for message_id in message_ids:
            try:
                forgotten = await self.bot.memory.forget_source(str(message_id))
            except MemoryBotError as exc:
                log.warning("could not forget message %s: %s", message_id, exc, exc_info=True)
                continue
            if forgotten:
                log.info("message %s was deleted: forgot %d memories", message_id, len(forgotten))


async def setup(bot: commands.Bot) -> None:
    from bot.app import MemoryBot

    if not isinstance(bot, MemoryBot):
        raise TypeError(f"the chat cog needs a MemoryBot, got {type(bot).__name__}")
    await bot.add_cog(ChatCog(bot))
