"""The LLM responder during an outage: a circuit breaker, redacted logs, the persona setting."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from bot.breaker import BreakerState, CircuitBreaker
from bot.redact import MASK, redact
from bot.responder import (
    DEFAULT_PERSONA,
    OpenAICompatibleResponder,
    ReplyRequest,
    SystemPrompts,
    TemplateResponder,
    build_responder,
    reply_guild,
)
from memory import ConfigError
from tests.bot_fixtures import FakeClock, bot_settings
from tests.test_responder import Handler, context, serve

__all__ = ["serve"]  # the fixture, imported explicitly
Serve = Callable[[Handler], Awaitable[str]]
SECRET = "sk-live-0123456789abcdef"


def request(text: str = "hello") -> ReplyRequest:
    return ReplyRequest(context(), text, display_name="Al")


async def test_an_outage_costs_the_timeout_once_then_answers_within_a_second(serve: Serve) -> None:
    release = asyncio.Event()
    calls = 0

    async def hanging(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await release.wait()  # the server accepted the connection and never answers
        return web.json_response({})

    responder = OpenAICompatibleResponder(
        await serve(hanging), "tiny", timeout=1.5, breaker_failures=1, breaker_cooldown=600
    )
    expected = await TemplateResponder().reply(request())
    try:
        assert await responder.reply(request()) == expected  # this one waits out the timeout
        assert responder.breaker.state is BreakerState.OPEN
        for _ in range(3):
            started = time.monotonic()
            assert await responder.reply(request()) == expected
            assert time.monotonic() - started < 1.0
    finally:
        release.set()
        await responder.close()
    assert calls == 1  # the open breaker sent nothing more to the dead endpoint


async def test_after_the_cooldown_one_call_probes_and_a_success_closes_the_breaker(serve: Serve) -> None:
    healthy = False
    calls = 0

    async def flaky(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if not healthy:
            return web.json_response({"error": "overloaded"}, status=503)
        return web.json_response({"choices": [{"message": {"content": "LLM says hi"}}]})

    clock = FakeClock()
    responder = OpenAICompatibleResponder(
        await serve(flaky), "tiny", breaker_failures=2, breaker_cooldown=30, clock=clock
    )
    try:
        for _ in range(4):
            assert (await responder.reply(request())).startswith("Hi Al")
        assert calls == 2  # two failures opened it; the next two never reached the server
        clock.now += 31
        assert (await responder.reply(request())).startswith("Hi Al")  # the probe fails
        assert (calls, responder.breaker.state) == (3, BreakerState.OPEN)
        clock.now += 31
        healthy = True
        assert await responder.reply(request()) == "LLM says hi"
        assert responder.breaker.state is BreakerState.CLOSED
        assert await responder.reply(request()) == "LLM says hi"
        assert calls == 5
    finally:
        await responder.close()


def test_half_open_lets_one_trial_through_at_a_time() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10, clock=clock)
    breaker.failed()
    assert not breaker.allow()
    clock.now += 10
    assert breaker.allow()
    assert not breaker.allow()  # the trial is still running
    breaker.abandoned()
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state is BreakerState.CLOSED and breaker.trips == 1


async def test_no_secret_reaches_the_log_even_when_the_server_echoes_it(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    async def echoing(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        body = f'{{"error": "bad gateway", "you_sent": "{auth}", "api_key": "{SECRET}"}}'
        return web.Response(text=body, status=502)

    caplog.set_level(logging.DEBUG)
    responder = OpenAICompatibleResponder(await serve(echoing), "tiny", api_key=SECRET)
    try:
        assert (await responder.reply(request())).startswith("Hi Al")
    finally:
        await responder.close()
    assert "HTTP 502" in caplog.text and "bad gateway" in caplog.text
    assert SECRET not in caplog.text
    assert "Bearer [redacted]" in caplog.text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer abc.def-123", "abc.def-123"),
        ('{"api_key": "k-999999"}', "k-999999"),
        ("http://user:hunter2@llm.local/v1", "hunter2"),
        ("token=tok_55555 in query", "tok_55555"),
        ("the key is plainsecret", "plainsecret"),
    ],
)
def test_redact_masks_keys_tokens_and_url_credentials(text: str, secret: str) -> None:
    out = redact(text, ["plainsecret"])
    assert secret not in out
    assert MASK in out


async def test_the_persona_setting_sets_the_system_prompt_per_guild(serve: Serve) -> None:
    prompts: list[str] = []

    async def recording(request: web.Request) -> web.Response:
        prompts.append((await request.json())["messages"][0]["content"])
        return web.json_response({"choices": [{"message": {"content": "ok"}}]})

    settings = bot_settings(
        responder="openai",
        llm_base_url=await serve(recording),
        system_prompt="You are Captain Memory, a pirate.",
        guild_system_prompts=["42=You are a librarian; whisper."],
    )
    responder = build_responder(settings, environ={})
    try:
        for guild in (None, 42, 7):  # guild 7 has no persona of its own: the default
            token = reply_guild.set(guild)
            try:
                await responder.reply(request())
            finally:
                reply_guild.reset(token)
    finally:
        await responder.close()
    assert [p.splitlines()[0] for p in prompts] == [
        "You are Captain Memory, a pirate.",
        "You are a librarian; whisper.",
        "You are Captain Memory, a pirate.",
    ]


def test_a_bad_guild_persona_entry_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="GUILD_ID=prompt"):
        SystemPrompts.from_settings("", ("general=be nice",))
    assert SystemPrompts.from_settings("  ", ()).for_guild(None) == DEFAULT_PERSONA
