"""What happens to memories outside a conversation: edits, leaving, and retention.

An edited message updates what was stored from it (a deleted one is forgotten by the chat cog);
when the bot leaves a guild its memories are forgotten (``bot.forget_guild_on_leave``), and a
member's when they leave one (``bot.forget_member_on_leave``); with ``bot.retention_days`` the
exchanges older than that are pruned every hour, their history states compacted.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import discord
from discord.ext import commands, tasks

from bot.privacy import Place
from memory import MemoryBotError

if TYPE_CHECKING:
    from bot.app import MemoryBot

log = logging.getLogger(__name__)
RETENTION_INTERVAL_HOURS = 1.0


class PrivacyCog(commands.Cog):
    """Keeps the stored memories in step with Discord and with the retention setting."""

    def __init__(self, bot: MemoryBot) -> None:
        self.bot = bot
        self.settings = bot.memory.settings.bot

    async def cog_load(self) -> None:
        if self.settings.retention_days > 0:
            self.retention.start()

    async def cog_unload(self) -> None:
        self.retention.cancel()

    @tasks.loop(hours=RETENTION_INTERVAL_HOURS)
    async def retention(self) -> None:
        try:
            await self.prune()
        except MemoryBotError as exc:  # retried at the next round
            log.error("retention pruning failed (retried in %.0f h): %s", RETENTION_INTERVAL_HOURS, exc)

    async def prune(self, now: datetime | None = None) -> int:
        """Forget the exchanges older than ``bot.retention_days`` (counted back from ``now``)."""
        days = self.settings.retention_days
        if days <= 0:
            return 0
        cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
        pruned = await self.bot.memory.prune_before(cutoff, actor="retention")
        if pruned:
            log.info("retention: forgot %d exchanges older than %d days", pruned, days)
        return pruned

    def edited_text(self, content: str) -> str:
        """What an edited message now says, as its memory holds it: a `remember` command's
        argument, or the message without the bot's mention."""
        prefix = self.settings.prefix
        if content.startswith(prefix):
            name, _, rest = content[len(prefix) :].partition(" ")
            if name == "remember":
                return rest.strip()
        me = self.bot.user
        if me is not None:
            content = content.replace(f"<@{me.id}>", " ").replace(f"<@!{me.id}>", " ")
        return content.strip()

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        message = payload.message
        if message.author.bot:
            return
        before = payload.cached_message
        if before is not None and before.content == message.content:
            return  # an embed or flags update: the words did not change
        content = message.content
        source = str(payload.message_id)
        text = self.edited_text(content)
        try:
            if text:
                edited = await self.bot.memory.edit_source(source, text, actor="bot")
            else:
                edited = await self.bot.memory.forget_source(source, actor="bot")
        except MemoryBotError as exc:
            log.warning("could not update memories of edited message %s: %s", source, exc, exc_info=True)
            return
        if edited:
            log.info("message %s was edited: updated %d memories", source, len(edited))

    @commands.Cog.listener()
    async def on_guild_remove(self, guild: discord.Guild) -> None:
        if not self.settings.forget_guild_on_leave:
            return
        scope = Place(guild.id).scope
        try:
            forgotten = await self.bot.memory.forget_scope(scope, actor="bot")
        except MemoryBotError as exc:
            log.error("could not forget guild %s after leaving it: %s", guild.id, exc, exc_info=True)
            return
        log.info("left guild %s: forgot %d memories said there", guild.id, forgotten)

    @commands.Cog.listener()
    async def on_raw_member_remove(self, payload: discord.RawMemberRemoveEvent) -> None:
        if not self.settings.forget_member_on_leave:
            return
        scope = Place(payload.guild_id).scope
        try:
            forgotten = await self.bot.memory.forget_scope(scope, user_id=payload.user.id, actor="bot")
        except MemoryBotError as exc:
            log.error("could not forget member %s of guild %s: %s", payload.user.id, payload.guild_id, exc)
            return
        log.info("member %s left guild %s: forgot %d memories", payload.user.id, payload.guild_id, forgotten)


async def setup(bot: commands.Bot) -> None:
    from bot.app import MemoryBot

    if not isinstance(bot, MemoryBot):
        raise TypeError(f"the privacy cog needs a MemoryBot, got {type(bot).__name__}")
    await bot.add_cog(PrivacyCog(bot))
