"""remember, recall, forget, profile and export as hybrid (prefix and slash) commands.

Every command acts on ``ctx.author`` only. Expected errors become a short reply (ephemeral for
slash commands) and the full error goes to the log.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.formatting import ActionError, friendly_error, split_message
from bot.rate_limit import RateDecision, rate_limited_reply
from memory import MemoryBotError

if TYPE_CHECKING:
    from bot.app import MemoryBot

log = logging.getLogger(__name__)
NO_PINGS = discord.AllowedMentions.none()
Ctx = commands.Context["MemoryBot"]


class RateLimitedError(commands.CheckFailure):
    def __init__(self, decision: RateDecision) -> None:
        super().__init__("rate limited")
        self.decision = decision


class MemoryCommands(commands.Cog):
    """Commands about the caller's own memory."""

    def __init__(self, bot: MemoryBot) -> None:
        self.bot = bot

    async def cog_check(self, ctx: Ctx) -> bool:  # type: ignore[override]
        decision = self.bot.rate_limiter.hit(ctx.author.id)
        if not decision.allowed:
            raise RateLimitedError(decision)
        return True

    async def cog_command_error(self, ctx: Ctx, error: Exception) -> None:  # type: ignore[override]
        if isinstance(error, RateLimitedError):
            if error.decision.notify:
                await self._send(ctx, rate_limited_reply(error.decision))
            return
        if isinstance(error, commands.UserInputError):
            log.info("bad command input from %s: %s", ctx.author.id, error)
            text = str(error)
            if ctx.command is not None:
                usage = f"{ctx.clean_prefix}{ctx.command.qualified_name} {ctx.command.signature}"
                text += f" Usage: `{usage.strip()}`"
            await self._send(ctx, text)
            return
        original = getattr(error, "original", error)
        log.error("command %s failed", ctx.command, exc_info=original)
        await self._send(ctx, friendly_error(original))

    async def _send(self, ctx: Ctx, text: str, *, file: discord.File | None = None) -> None:
        parts = split_message(text) or ["…"]
        for index, part in enumerate(parts):
            attach = file if file is not None and index == len(parts) - 1 else None
            # A prefix command is answered as a reply to it (a slash command's answer is already
            # tied to it); no ping either way.
            extra: dict[str, Any] = {"file": attach} if attach is not None else {}
            if ctx.interaction is None and index == 0:
                extra.update(reference=ctx.message, mention_author=False)
            await ctx.send(part, ephemeral=True, allowed_mentions=NO_PINGS, **extra)

    async def _answer(self, ctx: Ctx, action: Awaitable[str]) -> None:
        try:
            text = await action
        except (ActionError, MemoryBotError) as exc:
            log.warning("command %s by %s refused: %s", ctx.command, ctx.author.id, exc, exc_info=True)
            text = friendly_error(exc)
        await self._send(ctx, text)

    def _prefix(self, ctx: Ctx) -> str:
        return "/" if ctx.interaction is not None else ctx.clean_prefix

    # discord.py 2.7.1's hybrid_command does not type-check under mypy 2 (its TypeVars solve to
    # Never), hence the narrow ignores below; commands.command has no such problem.
    @commands.hybrid_command(name="remember")  # type: ignore[arg-type]
    @app_commands.describe(text="What I should remember")
    async def remember(self, ctx: Ctx, *, text: str) -> None:
        """Ask me to remember something."""
        source = str(ctx.message.id) if ctx.interaction is None else None
        await self._answer(ctx, self.bot.actions.remember(ctx.author.id, text, source_id=source))

    @commands.hybrid_command(name="recall")  # type: ignore[arg-type]
    @app_commands.describe(query="What to look for")
    async def recall(self, ctx: Ctx, *, query: str) -> None:
        """Search what I remember about you."""
        await self._answer(ctx, self.bot.actions.recall(ctx.author.id, query))

    @commands.hybrid_command(name="forget")  # type: ignore[arg-type]
    @app_commands.describe(target="A memory id from recall, or 'all'", confirm="Type 'confirm'")
    async def forget(self, ctx: Ctx, target: str, confirm: str | None = None) -> None:
        """Forget one memory by id, or everything about you with 'all'."""
        action = self.bot.actions.forget(ctx.author.id, target, confirm, prefix=self._prefix(ctx))
        await self._answer(ctx, action)

    @commands.hybrid_command(name="profile")  # type: ignore[arg-type]
    async def profile(self, ctx: Ctx) -> None:
        """What I know about you."""
        await self._answer(ctx, self.bot.actions.profile(ctx.author.id))

    @commands.hybrid_command(name="export")  # type: ignore[arg-type]
    async def export(self, ctx: Ctx) -> None:
        """Your data as a JSON file."""
        try:
            filename, payload = await self.bot.actions.export(ctx.author.id)
        except (ActionError, MemoryBotError) as exc:
            log.warning("export for %s refused: %s", ctx.author.id, exc, exc_info=True)
            await self._send(ctx, friendly_error(exc))
            return
        file = discord.File(io.BytesIO(payload), filename=filename)
        text = "Here is everything I have stored about you."
        if ctx.interaction is not None or ctx.guild is None:
            await self._send(ctx, text, file=file)
            return
        try:  # in a server channel the file would be public: send it privately instead
            await ctx.author.send(text, file=file, allowed_mentions=NO_PINGS)
        except discord.Forbidden:
            log.info("could not DM export to %s", ctx.author.id)
            await self._send(ctx, "I couldn't DM you; allow DMs from me or use `/export`.")
            return
        await self._send(ctx, "I've sent your data to your DMs.")


async def setup(bot: commands.Bot) -> None:
    from bot.app import MemoryBot

    if not isinstance(bot, MemoryBot):
        raise TypeError(f"the memory commands need a MemoryBot, got {type(bot).__name__}")
    await bot.add_cog(MemoryCommands(bot))
