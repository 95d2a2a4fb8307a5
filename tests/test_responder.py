"""Responders: the deterministic template one, and the OpenAI-compatible client against a real
aiohttp server on 127.0.0.1, including its timeout and error fallbacks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from bot.pipeline import ChatPipeline
from bot.responder import (
    OpenAICompatibleResponder,
    ReplyRequest,
    TemplateResponder,
    build_responder,
    llm_api_key,
    relevant,
    second_person,
)
from memory import Memory, MemorySystem, ScoredMemory, UserContext
from tests.bot_fixtures import bot_settings

NOW = datetime(2026, 1, 2, tzinfo=UTC)


pytestmark = pytest.mark.both_backends  # one behaviour suite, both storage backends


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
    assert "You told me you adopted a puppy named Rex." in reply
    assert "your name is Sam" not in reply  # "the name of my dog" is not a question about Sam
    assert "your name is Sam" in await responder.reply(ReplyRequest(ctx, "what is my name?"))
    far = ScoredMemory(rex.memory, 0.5, ("dense",), dense_score=0.1)
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


# -- answers about the person, through the real pipeline ---------------------------------------

PERSONA = (  # told in one sitting: each fact is indexed with the words of the one before it
    "I'm allergic to peanuts",
    "My sister Ana lives in Lisbon",
    "My husband is called Tom",
    "I'm training for a marathon in October",
    "I play the cello on weekends",
    "I have a dog named Rex",
)
ASKED = {  # each kind of question, and what the reply must hold
    "What dog do I have?": "you have a dog named Rex",
    "Where does my sister live?": "your sister Ana lives in Lisbon",
    "Who is my husband?": "your husband is called Tom",
    "When is my marathon?": "you're training for a marathon in October",
    "Which instrument do I play?": "you play the cello on weekends",
    "Do you remember what I'm allergic to?": "you're allergic to peanuts",
}


async def _told_persona(make_system: Callable[..., MemorySystem]) -> None:
    async with make_system() as memory:
        pipeline = ChatPipeline(memory, TemplateResponder())
        for fact in PERSONA:
            await pipeline.handle("u1", "Sam", fact)


@pytest.mark.parametrize("question", sorted(ASKED))
async def test_each_kind_of_question_about_the_person_gets_the_fact(
    make_system: Callable[..., MemorySystem], question: str
) -> None:
    await _told_persona(make_system)
    async with make_system() as memory:  # after a restart
        reply = await ChatPipeline(memory, TemplateResponder()).handle("u1", "Sam", question)
    assert f"You told me {ASKED[question]}." in reply
    assert "Good question" not in reply


async def test_what_do_you_know_about_me_summarises_facts_and_preferences(
    make_system: Callable[..., MemorySystem],
) -> None:
    await _told_persona(make_system)
    async with make_system() as memory:
        pipeline = ChatPipeline(memory, TemplateResponder())
        await pipeline.handle("u1", "Sam", "my favourite food is pizza")
        reply = await pipeline.handle("u1", "Sam", "What do you know about me?")
    assert reply.startswith("Here's what I know about you: your favourite food is pizza; ")
    facts = reply.split(": ", 1)[1].rstrip(".").split("; ")[1:]
    told = [second_person(f) for f in PERSONA]
    assert len(facts) == 3 and len(set(facts)) == 3 and set(facts) <= set(told)


async def test_no_greeting_two_messages_in_a_row(make_system: Callable[..., MemorySystem]) -> None:
    async with make_system() as memory:
        pipeline = ChatPipeline(memory, TemplateResponder())
        first = await pipeline.handle("u1", "Sam", "hello")
        second = await pipeline.handle("u1", "Sam", "hello")
        third = await pipeline.handle("u1", "Sam", "I like tea")
    assert first.startswith("Hi Sam, nice to meet you!")
    assert "Sam" not in second and "Sam" not in third  # every greeting names the person
    assert second in ("Tell me more!", "I'll remember that.", "Noted!", "Interesting, go on.")


async def test_a_greeting_after_the_person_was_away() -> None:
    seen = datetime(2026, 3, 1, 9, tzinfo=UTC)
    ctx = context(conversations_count=5, last_seen=seen, preferences={"name": "Sam"})
    soon = TemplateResponder(clock=lambda: seen + timedelta(minutes=20))
    later = TemplateResponder(clock=lambda: seen + timedelta(hours=5))
    assert not (await soon.reply(ReplyRequest(ctx, "hi"))).startswith("Hello again")
    assert (await later.reply(ReplyRequest(ctx, "hi"))).startswith("Hello again, Sam.")


async def test_a_nonsense_message_quotes_no_memory(make_system: Callable[..., MemorySystem]) -> None:
    await _told_persona(make_system)
    async with make_system() as memory:
        found = await memory.retrieve_memory("u1", "zzzzqqq", 5)
        reply = await ChatPipeline(memory, TemplateResponder()).handle("u1", "Sam", "zzzzqqq")
    assert len(found) == 5  # retrieval still ranks something: the responder must judge it
    assert not any(relevant(r, "zzzzqqq") for r in found)
    assert "told me" not in reply and "remember" not in reply and '"' not in reply


def test_second_person() -> None:
    assert second_person("I'm allergic to peanuts.") == "you're allergic to peanuts"
    assert second_person("My sister lives in Lisbon") == "your sister lives in Lisbon"
    assert second_person("I was born in Porto, it was cold") == "you were born in Porto, it was cold"
    assert second_person("Ana gave me my first cello") == "Ana gave you your first cello"
    assert second_person("Rex's vet is Dr. Olsen") == "Rex's vet is Dr. Olsen"
