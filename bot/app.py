"""The discord.py Bot: it owns the MemorySystem's lifecycle and loads the cogs."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.actions import MemoryActions
from bot.blocklist import FILENAME as BLOCKLIST_FILE
from bot.blocklist import BlockList
from bot.health import gateway_problem
from bot.metrics import BotMetrics
from bot.pipeline import ChatPipeline
from bot.rate_limit import RateLimiter
from bot.responder import Responder, TemplateResponder
from memory import ConfigError, MemorySystem, Settings
from memory.settings import BotSettings

log = logging.getLogger(__name__)
NO_PINGS = discord.AllowedMentions.none()
EXTENSIONS = (
    "bot.cogs.chat",
    "bot.cogs.memory_commands",
    "bot.cogs.owner",
    "bot.cogs.help",
    "bot.cogs.privacy",
)


def bot_intents() -> discord.Intents:
    """The default intents plus message content (privileged: enable it in the developer portal)."""
    intents = discord.Intents.default()
    intents.message_content = True
    return intents


def owner_ids(values: tuple[str, ...]) -> set[int]:
    """bot.owner_ids as Discord user ids; a ConfigError names a value that is not one."""
    bad = [v for v in values if not v.strip().isdigit()]
    if bad:
        raise ConfigError(
            f"setting bot.owner_ids = {list(values)!r} is invalid: {bad[0]!r} is not a Discord user id "
            "(a number: Discord > Settings > Advanced > Developer Mode, then Copy User ID)"
        )
    return {int(v) for v in values}


class MemoryTree(app_commands.CommandTree["MemoryBot"]):
    """The slash-command tree: a user the owner blocked gets a short private refusal."""

    async def interaction_check(self, interaction: discord.Interaction[MemoryBot], /) -> bool:
        if interaction.user.id not in self.client.blocked:
            return True
        log.info("ignored a slash command from blocked user %s", interaction.user.id)
        await interaction.response.send_message("You can't use this bot.", ephemeral=True)
        return False


class MemoryBot(commands.Bot):
    """A Bot whose ``setup_hook`` starts the memory and whose ``close`` saves it first."""

    def __init__(
        self,
        memory: MemorySystem,
        settings: Settings,
        *,
        responder: Responder | None = None,
        sync_commands: bool = False,
        clock: Callable[[], float] = time.monotonic,
        intents: discord.Intents | None = None,
        metrics: BotMetrics | None = None,
        **client_options: Any,
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned_or(settings.bot.prefix),
            intents=intents or bot_intents(),
            allowed_mentions=NO_PINGS,
            help_command=None,
            tree_cls=MemoryTree,  # bot.cogs.help: a hybrid /help that describes every command
            owner_ids=owner_ids(settings.bot.owner_ids) or None,
            proxy=settings.bot.proxy or None,
            **client_options,
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
        self.metrics = metrics or BotMetrics()
        self.blocked = BlockList()

    async def setup_hook(self) -> None:
        await self.memory.start()
        await self.blocked.load(Path(self.memory.data_dir) / BLOCKLIST_FILE)
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        if self._sync_commands:  # only when asked (--sync-commands or the owner's !sync)
            await self.sync_app_commands()

    async def sync_app_commands(self, guild_id: int | None = None) -> int:
        """Sync slash commands to ``guild_id`` (or bot.dev_guild_id) at once, else globally."""
        guild_id = guild_id or self.bot_settings.dev_guild_id or None
        if guild_id:
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d slash commands to guild %d", len(synced), guild_id)
        else:
            synced = await self.tree.sync()
            log.info("synced %d slash commands globally (may take a while to appear)", len(synced))
        return len(synced)

    def gateway_problem(self) -> str | None:
        """What is wrong with the Discord connection, or None (for /healthz)."""
        return gateway_problem(closed=self.is_closed(), ready=self.is_ready(), latency=self.latency)

    def gateway_latency(self) -> float | None:
        latency = self.latency
        return latency if math.isfinite(latency) else None

    async def process_commands(self, message: discord.Message, /) -> None:
        """Run commands only; any other message (even one with the prefix) is chat for the cog.

        Blocked users' commands are ignored (the chat cog ignores their messages too).
        """
        if message.author.bot or message.author.id in self.blocked:
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


class ShardedMemoryBot(MemoryBot, commands.AutoShardedBot):
    """``MemoryBot`` on discord.py's AutoShardedBot: one process runs ``shard_ids`` of
    ``shard_count`` shards (all of them when no ids are given). Several such processes share
    one memory on PostgreSQL; a person is the same user on every shard (DMs arrive on shard 0)."""


def shard_options(settings: BotSettings) -> dict[str, Any] | None:
    """The AutoShardedBot options for ``settings``; None for a single-shard ``MemoryBot``."""
    ids = [_shard_id(raw, settings.shard_count) for raw in settings.shard_ids]
    if settings.shard_count <= 1 and not ids:
        return None
    if ids and settings.shard_count < 1:
        raise ConfigError("bot.shard_ids needs bot.shard_count (the total number of shards)")
    options: dict[str, Any] = {"shard_count": settings.shard_count}
    if ids:
        options["shard_ids"] = sorted(set(ids))
    return options


def _shard_id(raw: str, count: int) -> int:
    if not raw.isdigit() or (count >= 1 and int(raw) >= count):
        raise ConfigError(
            f"bot.shard_ids: {raw!r} is not a shard id; use whole numbers below bot.shard_count ({count})"
        )
    return int(raw)


def make_memory_bot(memory: MemorySystem, settings: Settings, **options: Any) -> MemoryBot:
    """A ``ShardedMemoryBot`` when sharding is configured, else a ``MemoryBot``."""
    shards = shard_options(settings.bot)
    if shards is None:
        return MemoryBot(memory, settings, **options)
    if settings.storage.backend != "postgres" and shards.get("shard_ids") is not None:
        log.warning(
            "running shards %s of %d on SQLite: only this process can use the memory; run every "
            "shard group on one PostgreSQL memory (storage.backend = postgres)",
            shards["shard_ids"],
            shards["shard_count"],
        )
    return ShardedMemoryBot(memory, settings, **options, **shards)
