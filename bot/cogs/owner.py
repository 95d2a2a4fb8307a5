"""Commands for the bot's owner only (discord.py's ``is_owner``): forget, block, stats, sync.

Slash commands are synced here, on demand, and never on start: discord.py's guidance, since a
global sync on every restart soon hits Discord's daily limit.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import discord
from discord.ext import commands

from bot import health
from bot.formatting import split_message
from memory import MemoryBotError

if TYPE_CHECKING:
    from bot.app import MemoryBot

log = logging.getLogger(__name__)
NO_PINGS = discord.AllowedMentions.none()
Ctx = commands.Context["MemoryBot"]
STATS_SHOWN = (
    "users",
    "memories",
    "history_rows",
    "pending_embeddings",
    "commit_queue",
    "save_failures",
    "last_save",
    "index_vectors",
)


class OwnerCommands(commands.Cog):
    """Operator commands; anyone else is refused before the command runs."""

    def __init__(self, bot: MemoryBot) -> None:
        self.bot = bot

    async def cog_check(self, ctx: Ctx) -> bool:  # type: ignore[override]
        if await self.bot.is_owner(ctx.author):
            return True
        raise commands.NotOwner("only the bot's owner may use this command")

    async def cog_command_error(self, ctx: Ctx, error: Exception) -> None:  # type: ignore[override]
        if isinstance(error, commands.NotOwner):
            log.warning("owner command %s refused for %s", ctx.command, ctx.author.id)
            await self._reply(ctx, "Only the bot's owner can use that command.")
            return
        if isinstance(error, commands.UserInputError):
            usage = (
                f"{ctx.clean_prefix}{ctx.command.qualified_name} {ctx.command.signature}"
                if ctx.command
                else ""
            )
            await self._reply(ctx, f"{error} Usage: `{usage.strip()}`")
            return
        original = getattr(error, "original", error)
        if isinstance(original, MemoryBotError):
            log.warning("owner command %s failed: %s", ctx.command, original)
            await self._reply(ctx, f"That failed: {original}")
            return
        log.error("owner command %s failed", ctx.command, exc_info=original)
        await self._reply(ctx, "Something went wrong; the log has the details.")

    async def _reply(self, ctx: Ctx, text: str) -> None:
        for part in split_message(text):
            await ctx.send(part, allowed_mentions=NO_PINGS, reference=ctx.message, mention_author=False)

    @commands.command(name="forget-user")
    async def forget_user(self, ctx: Ctx, user_id: int) -> None:
        """Forget everything about a user by id (a deletion request)."""
        known = await self.bot.memory.forget_user(user_id, actor=f"owner:{ctx.author.id}")
        text = (
            f"Forgot everything about user {user_id}."
            if known
            else f"I had nothing stored about user {user_id}."
        )
        await self._reply(ctx, text)

    @commands.command(name="block")
    async def block(self, ctx: Ctx, user_id: int) -> None:
        """Stop answering and remembering a user (survives restarts)."""
        if user_id == ctx.author.id:
            raise commands.BadArgument("You cannot block yourself.")
        changed = await self.bot.blocked.block(user_id)
        await self._reply(
            ctx, f"Blocked user {user_id}." if changed else f"User {user_id} was already blocked."
        )

    @commands.command(name="unblock")
    async def unblock(self, ctx: Ctx, user_id: int) -> None:
        """Answer a blocked user again."""
        changed = await self.bot.blocked.unblock(user_id)
        await self._reply(
            ctx, f"Unblocked user {user_id}." if changed else f"User {user_id} was not blocked."
        )

    @commands.command(name="stats")
    async def stats(self, ctx: Ctx) -> None:
        """The memory system's figures and the health verdict."""
        verdict, stats = await health.check(self.bot.memory, self.bot.gateway_problem)
        lines = [f"Health: {verdict.describe()}"]
        if stats is not None:
            lines += [f"{key}: {stats[key]}" for key in STATS_SHOWN if key in stats]
        lines.append(f"blocked users: {len(self.bot.blocked)}")
        await self._reply(ctx, "\n".join(lines))

    @commands.command(name="sync")
    async def sync(self, ctx: Ctx, where: Literal["global", "here"] = "global") -> None:
        """Sync slash commands: globally, or to this guild at once ("here")."""
        if where == "here":
            if ctx.guild is None:
                raise commands.BadArgument("`sync here` only works in a guild channel.")
            count = await self.bot.sync_app_commands(ctx.guild.id)
            await self._reply(ctx, f"Synced {count} slash commands to this guild.")
        else:
            count = await self.bot.sync_app_commands()
            await self._reply(ctx, f"Synced {count} slash commands (global ones may take an hour to appear).")


async def setup(bot: commands.Bot) -> None:
    from bot.app import MemoryBot

    if not isinstance(bot, MemoryBot):
        raise TypeError(f"the owner commands need a MemoryBot, got {type(bot).__name__}")
    await bot.add_cog(OwnerCommands(bot))
