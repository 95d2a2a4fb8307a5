"""Fixtures for the bot tests: a real MemoryBot on a real MemorySystem, driven by dpytest.

dpytest 0.7.0 drives discord.py 2.7.1 with two adjustments made here: its fake connection
state never gets the running loop (discord.py's typing indicator needs it), and its fake
websocket has no socket, so ``Client.close`` must not ask it whether it is open.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import discord
import discord.ext.test as dpytest
import discord.http as dhttp
import pytest
from discord.ext.test import backend
from discord.ext.test import state as dstate

from bot.app import MemoryBot, bot_intents
from bot.responder import ReplyRequest, Responder
from memory import HashingEncoder, MemorySystem, Settings, load_settings


def bot_settings(**bot: Any) -> Settings:
    """Defaults, the hashing encoder, a generous rate limit, and ``bot`` overrides."""
    values: dict[str, Any] = {"rate_limit_messages": 1000, "rate_limit_seconds": 1.0, **bot}
    return load_settings(environ={}, overrides={"encoder": {"kind": "hashing"}, "bot": values})


class FakeClock:
    """A clock the test moves by hand, so rate limits are tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FixedResponder:
    """A real Responder that always answers the same text (e.g. a very long one)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.requests: list[ReplyRequest] = []

    async def reply(self, request: ReplyRequest) -> str:
        self.requests.append(request)
        return self.text

    async def close(self) -> None:
        return None


class RecordingHttp(backend.FakeHttp):
    """dpytest's fake HTTP client, keeping the JSON payload of every message the bot sends."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self.payloads: list[dict[str, Any]] = []

    async def send_message(self, channel_id: str | int, *, params: dhttp.MultipartParameters) -> Any:
        # dpytest reads ``channel`` from its caller's frame; keep it visible one level up.
        channel = sys._getframe(1).f_locals.get("channel")  # noqa: F841
        self.payloads.append(dict(params.payload or {}))
        return await super().send_message(int(channel_id), params=params)


BotFactory = Callable[..., Awaitable[MemoryBot]]


@pytest.fixture
async def make_bot(tmp_path: Path) -> AsyncIterator[BotFactory]:
    """Builds a configured MemoryBot; ``setup_hook`` (memory start, cogs) has run."""
    made: list[MemoryBot] = []

    async def make(
        *,
        responder: Responder | None = None,
        clock: Callable[[], float] | None = None,
        text_channels: list[str] | None = None,
        data_dir: Path | None = None,
        **bot: Any,
    ) -> MemoryBot:
        settings = bot_settings(**bot)
        memory = MemorySystem(data_dir or tmp_path / "data", settings=settings, encoder=HashingEncoder())
        extra: dict[str, Any] = {"clock": clock} if clock is not None else {}
        intents = bot_intents()
        intents.members = True  # dpytest keeps its fake members in the member cache
        client = MemoryBot(
            memory, settings, responder=responder, sync_commands=False, intents=intents, **extra
        )
        dpytest.configure(client, text_channels=text_channels or ["general"], members=["alice", "bob"])
        loop = asyncio.get_running_loop()
        http = RecordingHttp(loop)
        assert isinstance(client._connection, dstate.FakeState)  # dpytest.configure installed it
        http.state = client._connection
        client.http = http
        client._connection.http = http
        await client._async_setup_hook()  # gives dpytest's state the running loop
        await client.setup_hook()
        await dpytest.empty_queue()
        made.append(client)
        return client

    yield make
    await dpytest.empty_queue()
    for client in made:
        client.ws = None  # type: ignore[assignment]  # dpytest's fake websocket has no socket
        await client.close()


def payloads(client: MemoryBot) -> list[dict[str, Any]]:
    http = client.http
    assert isinstance(http, RecordingHttp)
    return http.payloads


def sent_messages() -> list[discord.Message]:
    """Every message the bot sent since the last call, oldest first."""
    out = []
    while not dpytest.sent_queue.empty():
        out.append(dpytest.get_message())
    return out


def member(index: int) -> discord.Member:
    return dpytest.get_config().members[index]


async def dm_channel(index: int) -> discord.DMChannel:
    return await member(index).create_dm()
