"""Responders: the deterministic template one, and the OpenAI-compatible client against a real
aiohttp server on 127.0.0.1, including its timeout and error fallbacks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from bot.responder import (
    OpenAICompatibleResponder,
    ReplyRequest,
    TemplateResponder,
    build_responder,
    llm_api_key,
)
from memory import Memory, MemorySystem, ScoredMemory, UserContext
from tests.bot_fixtures import bot_settings

NOW = datetime(2026, 1, 2, tzinfo=UTC)


def context(**changes: Any) -> UserContext:
    return UserContext.new("u1", NOW).copy_with(**changes)


def scored(
    text: str, kind: str = "exchange", rankers: tuple[str, ...] = ("dense", "lexical")
) -> ScoredMemory:
    meta = context().preferences  # an empty frozen mapping, made by the library
    return ScoredMemory(Memory(7, "u1", text, kind, NOW, meta), 1.0, rankers)


async def test_template_quotes_a_memory_close_in_meaning_but_never_an_old_question() -> None:
    responder = TemplateResponder()
    ctx = context(conversations_count=3, preferences={"name": "Sam"})
    rex = ScoredMemory(
        Memory(8, "u1", "Sam: I adopted a puppy named Rex\nBot: Cute!", "exchange", NOW, ctx.preferences),
        0.5,
        ("dense",),
        dense_score=0.45,
    )
    asked = scored("Sam: what is the name of my dog?\nBot: Good question!")
    reply = await responder.reply(ReplyRequest(ctx, "what is the name of my dog?", (asked, rex)))
    assert 'Last time you told me "I adopted a puppy named Rex"' in reply
    assert "your name is Sam" not in reply  # "the name of my dog" is not a question about Sam
    assert "your name is Sam" in await responder.reply(ReplyRequest(ctx, "what is my name?"))
    far = ScoredMemory(rex.memory, 0.5, ("dense",), dense_score=0.2)
    assert "Last time" not in await responder.reply(ReplyRequest(ctx, "what is the name of my dog?", (far,)))


async def test_template_greets_by_chosen_name_and_reflects_friendship() -> None:
    responder = TemplateResponder()
    first = await responder.reply(ReplyRequest(context(), "hello", display_name="Al"))
    assert first.startswith("Hi Al, nice to meet you!")
    friend = context(conversations_count=40, friendship_level=80, preferences={"name": "Sam"})
    later = await responder.reply(ReplyRequest(friend, "hello", display_name="Al"))
    assert later.startswith("Sam, my good friend!")
    assert later == await responder.reply(ReplyRequest(friend, "hello", display_name="Al"))


async def test_template_uses_relevant_memories_and_preferences() -> None:
    responder = TemplateResponder()
    ctx = context(conversations_count=3, friendship_level=6, preferences={"favourite food": "pizza"})
    memory = scored("Al: my cat Miso is sick\nBot: Oh no!")
    reply = await responder.reply(ReplyRequest(ctx, "Miso is better today", (memory,)))
    assert 'Last time you told me "my cat Miso is sick"' in reply
    answer = await responder.reply(ReplyRequest(ctx, "what is my favourite food?"))
    assert "your favourite food is pizza" in answer
    off_topic = scored("Al: hello\nBot: Hello again", rankers=("lexical",))
    assert "Last time" not in await responder.reply(ReplyRequest(ctx, "hello there", (off_topic,)))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Starts an aiohttp app on 127.0.0.1 (port 0) answering /v1/chat/completions."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/v1"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_openai_responder_sends_the_memories_and_returns_the_reply(
    serve: Callable[[Handler], Awaitable[str]], ms: MemorySystem
) -> None:
    seen: list[tuple[dict[str, Any], str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((await request.json(), request.headers.get("Authorization")))
        return web.json_response({"choices": [{"message": {"content": " Hi Sam! "}}]})

    url = await serve(handler)
    await ms.save_memory("u1", "my sister Ada lives in Lisbon")
    await ms.set_preference("u1", "name", "Sam")
    memories = await ms.retrieve_memory("u1", "where does Ada live", 3)
    ctx = await ms.get_user_context("u1")
    responder = OpenAICompatibleResponder(url, "tiny", api_key="sk-test", timeout=5)
    try:
        reply = await responder.reply(ReplyRequest(ctx, "where does Ada live?", tuple(memories)))
    finally:
        await responder.close()
    assert reply == "Hi Sam!"
    [(body, auth)] = seen
    assert body["model"] == "tiny" and body["max_tokens"] == 400
    assert auth == "Bearer sk-test"
    system = body["messages"][0]["content"]
    assert "my sister Ada lives in Lisbon" in system and "name: Sam" in system
    assert body["messages"][-1] == {"role": "user", "content": "where does Ada live?"}


async def test_openai_responder_falls_back_on_timeout(
    serve: Callable[[Handler], Awaitable[str]], caplog: pytest.LogCaptureFixture
) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await release.wait()  # never answers in time
        return web.json_response({})

    url = await serve(handler)
    responder = OpenAICompatibleResponder(url, "tiny", api_key="sk-secret", timeout=0.2)
    caplog.set_level(logging.WARNING, logger="bot.responder")
    try:
        reply = await responder.reply(ReplyRequest(context(), "hello", display_name="Al"))
    finally:
        release.set()
        await responder.close()
    assert reply == await TemplateResponder().reply(ReplyRequest(context(), "hello", display_name="Al"))
    assert "failed" in caplog.text and "template" in caplog.text
    assert "sk-secret" not in caplog.text


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, {"error": "boom"}),
        (200, {"choices": []}),
        (200, {"choices": [{"message": {"content": ""}}]}),
    ],
)
async def test_openai_responder_falls_back_on_errors(
    serve: Callable[[Handler], Awaitable[str]],
    caplog: pytest.LogCaptureFixture,
    status: int,
    body: dict[str, Any],
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    responder = OpenAICompatibleResponder(await serve(handler), "tiny")
    caplog.set_level(logging.WARNING, logger="bot.responder")
    try:
        reply = await responder.reply(ReplyRequest(context(), "hello", display_name="Al"))
    finally:
        await responder.close()
    assert reply.startswith("Hi Al")
    assert "using the template" in caplog.text or "template responder" in caplog.text


async def test_openai_responder_falls_back_when_nothing_listens() -> None:
    responder = OpenAICompatibleResponder("http://127.0.0.1:9/v1", "tiny", timeout=2)
    try:
        reply = await responder.reply(ReplyRequest(context(), "hello", display_name="Al"))
    finally:
        await responder.close()
    assert reply.startswith("Hi Al")


def test_build_responder_reads_the_key_only_from_the_environment() -> None:
    assert isinstance(build_responder(bot_settings()), TemplateResponder)
    responder = build_responder(
        bot_settings(responder="openai", llm_base_url="http://x/v1/"),
        {"OPENAI_API_KEY": "sk-a"},
    )
    assert isinstance(responder, OpenAICompatibleResponder)
    assert responder.url == "http://x/v1/chat/completions"
    assert "sk-a" not in repr(responder)
    assert llm_api_key({"MEMORY_BOT_LLM_API_KEY": "k1", "OPENAI_API_KEY": "k2"}) == "k1"
    assert llm_api_key({}) is None
