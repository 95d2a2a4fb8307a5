"""remember, recall, forget, profile, export, memory (on, off, list, share) and privacy as hybrid
(prefix and slash) commands.

Every command acts on ``ctx.author`` only. Expected errors become a short reply (ephemeral for
slash commands) and the full error goes to the log. Whatever shows memories answers privately
(``_send_private``): ephemeral for a slash command, a DM for a prefix command used in a guild
(with a short public note), and what it shows is only what its destination may see.
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
from bot.privacy import Place, visible_scopes
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

    async def _send(
        self, ctx: Ctx, text: str, *, file: discord.File | None = None, by_dm: bool = False
    ) -> None:
        """Answer in place (ephemeral for a slash command), or ``by_dm`` in the caller's DMs."""
        parts = split_message(text) or ["…"]
        for index, part in enumerate(parts):
            attach = file if file is not None and index == len(parts) - 1 else None
            extra: dict[str, Any] = {"file": attach} if attach is not None else {}
            if by_dm:
                await ctx.author.send(part, allowed_mentions=NO_PINGS, **extra)
                continue
            # A prefix command is answered as a reply to it (a slash command's answer is already
            # tied to it); no ping either way.
            if ctx.interaction is None and index == 0:
                extra.update(reference=ctx.message, mention_author=False)
            await ctx.send(part, ephemeral=True, allowed_mentions=NO_PINGS, **extra)

    async def _answer(self, ctx: Ctx, action: Awaitable[str]) -> None:
        await self._send(ctx, await self._run(ctx, action))

    async def _run(self, ctx: Ctx, action: Awaitable[str]) -> str:
        try:
            return await action
        except (ActionError, MemoryBotError) as exc:
            log.warning("command %s by %s refused: %s", ctx.command, ctx.author.id, exc, exc_info=True)
            return friendly_error(exc)

    def _place(self, ctx: Ctx) -> Place:
        return Place(ctx.guild.id if ctx.guild is not None else None, ctx.channel.id)

    def _goes_to_dm(self, ctx: Ctx) -> bool:
        """A prefix command used in a guild is answered in a DM."""
        return ctx.interaction is None and ctx.guild is not None

    async def _shown_scopes(self, ctx: Ctx) -> frozenset[str] | None:
        """What the answer may show: everything in a DM, only what the guild may see in an
        ephemeral answer there (it is shown in the guild's channel, if only to the caller)."""
        if ctx.guild is None or self._goes_to_dm(ctx):
            return None
        closed = self.bot.memory.settings.bot.no_cross_guild
        return await visible_scopes(self.bot.memory, ctx.author.id, self._place(ctx), closed)

    async def _send_private(self, ctx: Ctx, text: str, *, file: discord.File | None = None) -> None:
        """Answer so that only the caller sees it: ephemeral (slash), in place (a DM), or by DM
        with a short public note (a prefix command in a guild)."""
        if not self._goes_to_dm(ctx):
            await self._send(ctx, text, file=file)
            return
        try:
            await self._send(ctx, text, file=file, by_dm=True)
        except discord.Forbidden:
            log.info("could not DM %s the answer to %s", ctx.author.id, ctx.command)
            await self._send(ctx, "I couldn't DM you; allow DMs from me, or use the slash command.")
            return
        await self._send(ctx, "I've sent you a DM.")

    def _prefix(self, ctx: Ctx) -> str:
        return "/" if ctx.interaction is not None else ctx.clean_prefix

    # discord.py 2.7.1's hybrid_command does not type-check under mypy 2 (its TypeVars solve to
    # Never), hence the narrow ignores below; commands.command has no such problem.
    @commands.hybrid_command(name="remember")  # type: ignore[arg-type]
    @app_commands.describe(text="What I should remember")
    async def remember(self, ctx: Ctx, *, text: str) -> None:
        """Ask me to remember something."""
        source = str(ctx.message.id) if ctx.interaction is None else None
        action = self.bot.actions.remember(ctx.author.id, text, source_id=source, place=self._place(ctx))
        await self._answer(ctx, action)

    @commands.hybrid_command(name="recall")  # type: ignore[arg-type]
    @app_commands.describe(query="What to look for")
    async def recall(self, ctx: Ctx, *, query: str) -> None:
        """Search what I remember about you (answered privately)."""
        scopes = await self._shown_scopes(ctx)
        text = await self._run(ctx, self.bot.actions.recall(ctx.author.id, query, scopes=scopes))
        await self._send_private(ctx, text)

    @commands.hybrid_command(name="forget")  # type: ignore[arg-type]
    @app_commands.describe(target="A memory id from recall, or 'all'", confirm="Type 'confirm'")
    async def forget(self, ctx: Ctx, target: str, confirm: str | None = None) -> None:
        """Forget one memory by id, or everything about you with 'all'."""
        action = self.bot.actions.forget(ctx.author.id, target, confirm, prefix=self._prefix(ctx))
        await self._answer(ctx, action)

    @commands.hybrid_command(name="profile")  # type: ignore[arg-type]
    async def profile(self, ctx: Ctx) -> None:
        """What I know about you (answered privately)."""
        shown_in_guild = await self._shown_scopes(ctx) is not None  # ephemeral, in the guild
        place = self._place(ctx) if shown_in_guild else None
        text = await self._run(ctx, self.bot.actions.profile(ctx.author.id, place=place))
        await self._send_private(ctx, text)

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
        # In a server channel the file would be public: a prefix command gets it by DM.
        await self._send_private(ctx, "Here is everything I have stored about you.", file=file)

    # `!memory [page]` lists too; a slash group cannot be run itself, so there it is /memory list.
    @commands.hybrid_group(name="memory", invoke_without_command=True)  # type: ignore[arg-type]
    async def memory(self, ctx: Ctx, page: int = 1) -> None:
        """Your memory: list [page], on, off, share on|off."""
        await self._list(ctx, page)

    @memory.command(name="list")  # type: ignore[arg-type]
    @app_commands.describe(page="Which page of the list")
    async def memory_list(self, ctx: Ctx, page: int = 1) -> None:
        """What I have stored about you, with ids, dates and where it was said (privately)."""
        await self._list(ctx, page)

    async def _list(self, ctx: Ctx, page: int) -> None:
        scopes = await self._shown_scopes(ctx)
        text = await self._run(ctx, self.bot.actions.list_memories(ctx.author.id, page, scopes=scopes))
        await self._send_private(ctx, text)

    @memory.command(name="off")  # type: ignore[arg-type]
    async def memory_off(self, ctx: Ctx) -> None:
        """Stop remembering: nothing of what you say later is stored."""
        await self._answer(ctx, self.bot.actions.set_memory(ctx.author.id, on=False))

    @memory.command(name="on")  # type: ignore[arg-type]
    async def memory_on(self, ctx: Ctx) -> None:
        """Remember our conversations again."""
        await self._answer(ctx, self.bot.actions.set_memory(ctx.author.id, on=True))

    @memory.command(name="share")  # type: ignore[arg-type]
    @app_commands.describe(state="on: use your memories across servers; off: each server its own")
    async def memory_share(self, ctx: Ctx, state: str) -> None:
        """Use your memories across servers (on) or keep each server's to itself (off)."""
        choice = state.strip().lower()
        if choice not in ("on", "off"):
            await self._send(ctx, f"`{self._prefix(ctx)}memory share` takes `on` or `off`.")
            return
        await self._answer(ctx, self.bot.actions.set_share(ctx.author.id, on=choice == "on"))

    @commands.hybrid_command(name="privacy")  # type: ignore[arg-type]
    async def privacy(self, ctx: Ctx) -> None:
        """What I store, where, for how long, and how to delete it."""
        await self._send(ctx, self.bot.actions.privacy())


async def setup(bot: commands.Bot) -> None:
    from bot.app import MemoryBot

    if not isinstance(bot, MemoryBot):
        raise TypeError(f"the memory commands need a MemoryBot, got {type(bot).__name__}")
    await bot.add_cog(MemoryCommands(bot))
