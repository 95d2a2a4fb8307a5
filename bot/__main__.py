"""``python -m bot``: the Discord bot when DISCORD_TOKEN is set, else the console chat."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import discord

from bot.app import MemoryBot
from bot.console import ConsoleUser, run_console, stop_on_signals
from bot.responder import Responder, build_responder
from memory import MemoryBotError, MemorySystem, Settings, load_settings

log = logging.getLogger("bot")
TOKEN_VARIABLE = "DISCORD_TOKEN"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="memory-bot: a Discord bot with long-term memory. Without DISCORD_TOKEN "
        "(or with --console) it chats in this terminal through the same pipeline.",
    )
    parser.add_argument("--data-dir", type=Path, help="data folder (default: storage.data_dir)")
    parser.add_argument("--config", type=Path, help="a TOML settings file")
    parser.add_argument("--console", action="store_true", help="chat in the terminal")
    parser.add_argument(
        "--user",
        help="the console user as ID or ID:NAME (default: console-<login>:<login>)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    return parser.parse_args(argv)


def default_user() -> ConsoleUser:
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no login name in some containers
        login = "you"
    return ConsoleUser(f"console-{login}", login)


async def run_discord(token: str, memory: MemorySystem, settings: Settings, responder: Responder) -> None:
    """Run until the connection ends or SIGINT/SIGTERM; close() saves the memory either way."""
    bot = MemoryBot(memory, settings, responder=responder)
    stop = asyncio.Event()
    async with bot:
        with stop_on_signals(stop):
            runner = asyncio.create_task(bot.start(token))
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                log.info("signal received: shutting down")
            await bot.close()
            stopper.cancel()
            await runner  # re-raises a login or connection failure


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("memory.audit").setLevel(logging.INFO)  # erasures are always shown
    try:
        user = ConsoleUser.parse(args.user) if args.user else default_user()
        settings = load_settings(args.config)  # secrets are never read as settings
        memory = MemorySystem(args.data_dir, settings=settings)
        responder = build_responder(settings)
        token = os.environ.get(TOKEN_VARIABLE, "").strip()
        if token and not args.console:
            asyncio.run(run_discord(token, memory, settings, responder))
        else:
            if not token and not args.console:
                print(f"{TOKEN_VARIABLE} is not set: starting the console chat.", file=sys.stderr)
            asyncio.run(run_console(memory, responder, user))
    except ValueError as exc:  # includes InvalidInputError
        print(f"memory-bot: {exc}", file=sys.stderr)
        return 2
    except MemoryBotError as exc:
        print(f"memory-bot: {exc}", file=sys.stderr)
        return 1
    except discord.LoginFailure:
        print(f"memory-bot: Discord rejected the token in {TOKEN_VARIABLE}.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
