"""``help`` as a prefix and slash command: every command with its one-line description.

discord.py's default help lists a command's docstring; commands without one showed blank. Here
each command is listed with its description (the slash description, else the docstring), and
only the commands the caller may run (owner commands appear for the owner alone).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.formatting import split_message

if TYPE_CHECKING:
    from bot.app import MemoryBot

NO_PINGS = discord.AllowedMentions.none()
Ctx = commands.Context["MemoryBot"]
OWNER_COG = "OwnerCommands"


def describe(command: commands.Command[Any, ..., Any]) -> str:
    """A command's one-line description: its ``description``, else its docstring's first line."""
    return (command.description or command.short_doc or "").strip()


class HelpCommands(commands.Cog):
    """The help command."""

    def __init__(self, bot: MemoryBot) -> None:
        self.bot = bot

    @commands.hybrid_command(name="help")  # type: ignore[arg-type]
    async def help(self, ctx: Ctx) -> None:
        """List my commands and what they do."""
        prefix = "/" if ctx.interaction is not None else ctx.clean_prefix
        lines = ["Talk to me in a DM or mention me, and I'll remember what you tell me. Commands:"]
        for command in sorted(self.bot.commands, key=lambda c: c.qualified_name):
            if command.hidden or not await _may_run(command, ctx):
                continue
            usage = f"{prefix}{command.qualified_name} {command.signature}".strip()
            lines.append(f"`{usage}`: {describe(command)}")
        for part in split_message("\n".join(lines)):
            if ctx.interaction is not None:
                await ctx.send(part, ephemeral=True, allowed_mentions=NO_PINGS)
            else:
                await ctx.send(part, allowed_mentions=NO_PINGS, reference=ctx.message, mention_author=False)


async def _may_run(command: commands.Command[Any, ..., Any], ctx: Ctx) -> bool:
    # Not command.can_run: that runs every cog check, and the memory commands' check counts
    # towards the caller's rate limit. Only the owner commands are restricted.
    if command.cog_name == OWNER_COG:
        return await ctx.bot.is_owner(ctx.author)
    return True


async def setup(bot: commands.Bot) -> None:
    from bot.app import MemoryBot

    if not isinstance(bot, MemoryBot):
        raise TypeError(f"the help command needs a MemoryBot, got {type(bot).__name__}")
    await bot.add_cog(HelpCommands(bot))
