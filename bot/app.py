"""The discord.py Bot: it owns the MemorySystem's lifecycle and loads the cogs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import discord
from discord.ext import commands

from bot.actions import MemoryActions
from bot.pipeline import ChatPipeline
from bot.rate_limit import RateLimiter
from bot.responder import Responder, TemplateResponder
from memory import MemorySystem, Settings

log = logging.getLogger(__name__)
NO_PINGS = discord.AllowedMentions.none()
EXTENSIONS = ("bot.cogs.chat", "bot.cogs.memory_commands")


def bot_intents() -> discord.Intents:
    """The default intents plus message content (privileged: enable it in the developer portal)."""
    intents = discord.Intents.default()
    intents.message_content = True
    return intents


class MemoryBot(commands.Bot):
    """A Bot whose ``setup_hook`` starts the memory and whose ``close`` saves it first."""

    def __init__(
        self,
        memory: MemorySystem,
        settings: Settings,
        *,
        responder: Responder | None = None,
        sync_commands: bool = True,
        clock: Callable[[], float] = time.monotonic,
        intents: discord.Intents | None = None,
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned_or(settings.bot.prefix),
            intents=intents or bot_intents(),
            allowed_mentions=NO_PINGS,
        )
        self.memory = memory
        self.bot_settings = settings.bot
        self.responder: Responder = responder or TemplateResponder()
        self.pipeline = ChatPipeline(memory, self.responder)
        self.actions = MemoryActions(memory, clock=clock)
        self.rate_limiter = RateLimiter(
            settings.bot.rate_limit_messages, settings.bot.rate_limit_seconds, clock=clock
        )
        self._sync_commands = sync_commands

    async def setup_hook(self) -> None:
        await self.memory.start()
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        if self._sync_commands:
            await self.sync_app_commands()

    async def sync_app_commands(self) -> None:
        """Slash commands go to the development guild when one is set (instant), else globally."""
        guild_id = self.bot_settings.dev_guild_id
        if guild_id:
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d slash commands to development guild %d", len(synced), guild_id)
        else:
            synced = await self.tree.sync()
            log.info("synced %d slash commands globally (may take a while to appear)", len(synced))

    async def process_commands(self, message: discord.Message, /) -> None:
        """Run commands only; any other message (even one with the prefix) is chat for the cog."""
        if message.author.bot:
            return
        ctx = await self.get_context(message)
        if ctx.command is not None:
            await self.invoke(ctx)

    async def close(self) -> None:
        """Close the responder and the memory (final snapshot) before disconnecting."""
        try:
            try:
                await self.responder.close()
            finally:
                await self.memory.close()
        finally:
            await super().close()
