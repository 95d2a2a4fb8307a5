"""``python -m bot``: the Discord bot or the console chat, as ``bot.mode`` (or --mode) says.

Built to run under a service manager: a missing token in Discord mode, a bad setting or a
data folder that cannot be used exit non-zero with one line (2 for configuration, so systemd's
``RestartPreventExitStatus=2`` stops a restart loop); an unreachable Discord is retried with
backoff; SIGINT/SIGTERM (Ctrl-C) at any point exit quietly after closing the memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import discord

from bot.app import MemoryBot, make_memory_bot
from bot.config_view import render_config
from bot.console import ConsoleUser, run_console, stop_on_signals
from bot.health import Health, check, memory_probe
from bot.health_server import HealthServer
from bot.logs import configure_logging
from bot.metrics import BotMetrics
from bot.redact import redact
from bot.responder import Responder, build_responder, llm_api_key
from bot.timed_memory import TimedMemorySystem
from memory import ConfigError, MemoryBotError, MemorySystem, Settings, load_settings
from memory.storage.urls import url_passwords

log = logging.getLogger("bot")
TOKEN_VARIABLE = "DISCORD_TOKEN"
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130
T = TypeVar("T")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="memory-bot: a Discord bot with long-term memory, or the same chat in this "
        "terminal. Example: DISCORD_TOKEN=... python -m bot --mode discord",
    )
    parser.add_argument("--data-dir", type=Path, help="data folder (default: storage.data_dir)")
    parser.add_argument("--config", type=Path, help="a TOML settings file")
    parser.add_argument(
        "--mode",
        choices=("auto", "discord", "console"),
        help="discord (needs DISCORD_TOKEN), console, or auto (default: bot.mode)",
    )
    parser.add_argument("--console", action="store_true", help="chat in the terminal (= --mode console)")
    parser.add_argument(
        "--user",
        help="the console user as ID or ID:NAME (default: console-<login>:<login>)",
    )
    parser.add_argument(
        "--sync-commands",
        action="store_true",
        help="sync slash commands once at start (only after they changed; the owner's !sync does the same)",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the effective settings (secrets masked) and exit"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (at least INFO)")
    return parser.parse_args(argv)


def default_user() -> ConsoleUser:
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no login name in some containers
        login = "you"
    return ConsoleUser(f"console-{login}", login)


def choose_mode(mode: str, token: str, interactive: bool) -> str:
    """ "discord" or "console" for the configured ``mode``; a ConfigError when neither fits."""
    if mode == "discord" and not token:
        raise ConfigError(
            f'bot.mode is "discord" but {TOKEN_VARIABLE} is not set; set it to the bot\'s token '
            "(Discord developer portal > Bot > Reset Token), or use --mode console"
        )
    if mode == "auto":
        if token:
            return "discord"
        if not interactive:
            raise ConfigError(
                f"{TOKEN_VARIABLE} is not set and standard input is not a terminal; set "
                f"{TOKEN_VARIABLE} to run on Discord, or pass --console to chat on standard input"
            )
        return "console"
    return mode


def health_enabled(settings: Settings, mode: str) -> bool:
    enabled = settings.health.enabled
    return enabled == "on" or (enabled == "auto" and mode == "discord")


async def login_with_retry(
    make_bot: Callable[[], MemoryBot],
    token: str,
    max_delay: float,
    stopped: asyncio.Event,
    on_failure: Callable[[str], None] = lambda problem: None,
) -> MemoryBot | None:
    """A logged-in bot, retrying while Discord cannot be reached; None when stopped first.

    Each attempt gets a fresh bot: a failed login leaves discord.py's HTTP session half set up,
    and closing the bot (its memory not yet started) releases everything it made.
    """
    delay = 1.0
    while not stopped.is_set():
        bot = make_bot()
        try:
            await bot.login(token)
            return bot
        except (discord.LoginFailure, MemoryBotError):  # a bad token, or the memory cannot start
            await bot.close()
            raise
        except (aiohttp.ClientError, OSError, TimeoutError, discord.HTTPException) as exc:
            await bot.close()
            if isinstance(exc, discord.HTTPException) and exc.status < 500:
                raise  # Discord answered and refused: retrying will not help
            problem = f"cannot reach Discord ({type(exc).__name__}: {redact(str(exc), [token])})"
            on_failure(problem)
            log.warning("%s; retrying in %.0f s", problem, delay)
        try:
            await asyncio.wait_for(stopped.wait(), delay)
        except TimeoutError:
            delay = min(delay * 2, max_delay)
    return None


async def run_discord(
    token: str,
    make_memory: Callable[[], MemorySystem],
    settings: Settings,
    make_responder: Callable[[], Responder],
    *,
    sync_commands: bool = False,
    metrics: BotMetrics | None = None,
) -> None:
    """Run until the connection ends or SIGINT/SIGTERM; the memory is closed (saved) either way."""
    stop = asyncio.Event()
    metrics = metrics or BotMetrics()
    current: list[MemoryBot] = []
    connecting = ["connecting to Discord"]  # until logged in: what /healthz reports

    def make_bot() -> MemoryBot:
        bot = make_memory_bot(
            make_memory(), settings, responder=make_responder(), sync_commands=sync_commands, metrics=metrics
        )
        current[:] = [bot]
        return bot

    async def probe() -> tuple[Health, dict[str, Any] | None]:
        if connecting:
            return Health((f"Discord gateway: {connecting[0]}",)), None
        return await check(current[0].memory, current[0].gateway_problem)

    def failed(problem: str) -> None:
        connecting[:] = [problem]

    server = None
    if health_enabled(settings, "discord"):
        server = HealthServer(
            probe,
            metrics,
            host=settings.health.host,
            port=settings.health.port,
            gateway_latency=lambda: current[0].gateway_latency() if current else None,
        )
        await server.start()
    try:
        with stop_on_signals(stop):
            retry = settings.bot.connect_retry_max_seconds
            login = login_with_retry(make_bot, token, retry, stop, failed)
            finished, bot = await until_stopped(login, stop)
            if finished and bot is not None:
                connecting.clear()
                finished, _ = await until_stopped(bot.connect(reconnect=True), stop)
            if not finished or stop.is_set():
                log.info("signal received: shutting down")
    finally:
        try:
            if current and not current[0].is_closed():
                await current[0].close()
        finally:
            if server is not None:
                await server.close()


async def until_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> tuple[bool, T | None]:
    """``(True, result)`` when ``work`` ended first, ``(False, None)`` when ``stop`` was set first."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return True, task.result()  # re-raises a login or connection failure
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False, None


async def run_console_with_health(
    memory: MemorySystem, responder: Responder, user: ConsoleUser, settings: Settings, metrics: BotMetrics
) -> None:
    """The console chat, with the health endpoint when health.enabled = "on"."""
    if not health_enabled(settings, "console"):
        await run_console(memory, responder, user)
        return
    server = HealthServer(memory_probe(memory), metrics, host=settings.health.host, port=settings.health.port)
    await server.start()
    try:
        await run_console(memory, responder, user)
    finally:
        await server.close()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    try:
        return _main(parse_args(argv), env)
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        print("memory-bot: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    metrics = BotMetrics()
    token = env.get(TOKEN_VARIABLE, "").strip()
    try:
        settings = load_settings(args.config, environ=env)  # secrets are never read as settings
        if args.print_config:
            sys.stdout.write(render_config(settings, env))
            return 0
        database_passwords = url_passwords(settings.storage.postgres_url)
        configure_logging(
            settings, verbose=args.verbose, secrets=[token, llm_api_key(env) or "", *database_passwords]
        )
        requested = "console" if args.console else (args.mode or settings.bot.mode)
        mode = choose_mode(requested, token, sys.stdin.isatty())
        user = ConsoleUser.parse(args.user) if args.user else default_user()

        def make_memory() -> MemorySystem:
            return TimedMemorySystem(args.data_dir, settings=settings, metrics=metrics)

        def make_responder() -> Responder:
            return build_responder(settings, env)

        if mode == "discord":
            asyncio.run(
                run_discord(
                    token,
                    make_memory,
                    settings,
                    make_responder,
                    sync_commands=args.sync_commands,
                    metrics=metrics,
                )
            )
        else:
            asyncio.run(run_console_with_health(make_memory(), make_responder(), user, settings, metrics))
    except ConfigError as exc:
        print(f"memory-bot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:  # includes InvalidInputError
        print(f"memory-bot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except MemoryBotError as exc:
        print(f"memory-bot: {exc}", file=sys.stderr)
        return 1
    except discord.LoginFailure:
        print(
            f"memory-bot: Discord rejected the token in {TOKEN_VARIABLE}; reset it in the developer portal.",
            file=sys.stderr,
        )
        return 1
    except discord.PrivilegedIntentsRequired:
        print(
            "memory-bot: Discord refused the message content intent; enable it in the developer portal "
            "(Bot > Privileged Gateway Intents).",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
