"""Responders build the reply text: an offline template one and an OpenAI-compatible client."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import zlib
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import aiohttp

from bot import persona
from bot.breaker import BreakerState, CircuitBreaker
from bot.formatting import shorten
from bot.redact import redact
from memory import ConfigError, ScoredMemory, Settings, UserContext

log = logging.getLogger(__name__)
API_KEY_VARIABLES = ("MEMORY_BOT_LLM_API_KEY", "OPENAI_API_KEY")
RECENT_IN_PROMPT = 6
_WORD = re.compile(r"[a-z0-9']+")
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "be",
        "but",
        "do",
        "for",
        "hello",
        "hey",
        "hi",
        "i",
        "i'm",
        "in",
        "is",
        "it",
        "me",
        "my",
        "of",
        "on",
        "or",
        "so",
        "that",
        "the",
        "this",
        "to",
        "was",
        "what",
        "you",
        "your",
    ]
)
QUOTE_LENGTH = 160


@dataclass(frozen=True, slots=True)
class ReplyRequest:
    """What a responder knows when it answers one message."""

    context: UserContext
    message: str
    memories: tuple[ScoredMemory, ...] = ()
    learned: Mapping[str, str | None] = field(default_factory=dict)
    display_name: str = ""

    @property
    def name(self) -> str:
        """What to call the person: the name they asked for, else their display name."""
        chosen = self.context.preferences.get(persona.NAME_KEY)
        if isinstance(chosen, str) and chosen:
            return chosen
        return self.display_name or self.context.display_name or "friend"


class Responder(Protocol):
    """Turns a request into reply text; ``close`` releases what it holds."""

    async def reply(self, request: ReplyRequest) -> str: ...

    async def close(self) -> None: ...


def exchange_message(memory_text: str) -> str:
    """The person's own words from an exchange memory ("Name: message\\nBot: reply")."""
    said, _, _ = memory_text.partition("\nBot: ")
    _, colon, message = said.partition(": ")
    return (message if colon else said).strip()


def recalled_text(scored: ScoredMemory) -> str:
    memory = scored.memory
    return exchange_message(memory.text) if memory.kind == "exchange" else memory.text.strip()


# When a retrieved memory is worth saying back. The reranker's probability (memory/ranker.py)
# is learned from features relative to one query's candidates: on a person's ten facts it
# reads 0.01-0.14 for the right one and 0.015-0.03 for the best of nonsense ("zzzzqqq",
# "hello"), and about 0.2 when no candidate matches at all (every feature flat). So it ranks
# well but cannot alone say "nothing fits": a memory is relevant when it shares a content word
# with the message, or its cosine is clear (CLOSE: "the name of my dog" ~ "I adopted a puppy
# named Rex" is 0.45 with MiniLM; nonsense and greetings stay below 0.27), or the ranker is
# confident (PROBABLE) about a memory not far in meaning (ANSWERABLE). A question about the
# person takes the ranker's best statement from ANSWERABLE on ("What food must I avoid?" ~
# "I'm allergic to peanuts" is 0.16, "How is my kid doing?" ~ "My daughter Hana just started
# school" 0.19; chosen on benchmarks/bench_answers.py's personas, so an in-sample choice).
PROBABLE = 0.05
CLOSE = 0.3
ANSWERABLE = 0.15
# The person was away this long: say hello again (and not on every message).
GREET_AFTER = timedelta(hours=3)
SUMMARY_FACTS = 3

_ASKS = re.compile(
    r"^\s*(what|what's|whats|where|who|whom|whose|when|which|how|do you (remember|know)|did i|do i|"
    r"am i|have i|can you remember|tell me)\b",
    re.I,
)
_ABOUT_ME = re.compile(r"\b(i|i'm|i've|i'd|me|my|mine|myself)\b", re.I)
_SUMMARY = re.compile(
    r"\b(what do you (know|remember)|what have i told you|tell me (what you know )?about me|"
    r"who am i)\b",
    re.I,
)
_SECOND_PERSON = {
    "i'm": "you're",
    "i've": "you've",
    "i'll": "you'll",
    "i'd": "you'd",
    "i": "you",
    "me": "you",
    "my": "your",
    "mine": "yours",
    "myself": "yourself",
    "am": "are",
    "was": "were",
}
_PRONOUN = re.compile(r"\b(i['’]m|i['’]ve|i['’]ll|i['’]d|i|me|my|mine|myself|am|was)\b", re.I)


def second_person(statement: str) -> str:
    """ "I'm allergic to peanuts." -> "you're allergic to peanuts": what the person told, told back.

    "was" and "am" change only after "I" ("I was born" -> "you were born"; "it was" stays).
    """
    out: list[str] = []
    last = 0
    previous = ""
    for match in _PRONOUN.finditer(statement):
        word = match.group(0).replace("’", "'").lower()
        keep = word in ("am", "was") and previous != "i"
        out += [statement[last : match.start()], match.group(0) if keep else _SECOND_PERSON[word]]
        last = match.end()
        previous = word
    out.append(statement[last:])
    text = "".join(out).strip().rstrip(".!;,")
    first = text.split(" ", 1)[0]
    if first.lower() in {"you", "you're", "you've", "you'll", "you'd", "your", "yours"}:
        text = text[0].lower() + text[1:]
    return text


def is_question_about_me(message: str) -> bool:
    """A question about the person: "What pet do I have?", "Do you remember my allergy?"."""
    text = message.strip()
    asks = text.endswith("?") or bool(_ASKS.match(text))
    return asks and (bool(_ABOUT_ME.search(text)) or bool(_SUMMARY.search(text)))


def relevant(scored: ScoredMemory, message: str, floor: float = CLOSE) -> bool:
    """Worth saying back for ``message`` (see PROBABLE, CLOSE): never a nonsense match."""
    if "lexical" in scored.rankers and _shared_words(recalled_text(scored), message):
        return True
    cosine = scored.dense_score or 0.0
    confident = "reranker" in scored.rankers and scored.score >= PROBABLE and cosine >= ANSWERABLE
    return confident or cosine >= floor


def _statements(request: ReplyRequest) -> list[ScoredMemory]:
    """The retrieved memories that tell something, best first, each text once."""
    current = request.message.strip().lower()
    seen: set[str] = set()
    out = []
    for scored in request.memories:
        said = recalled_text(scored)
        key = said.lower()
        if not said or key == current or said.rstrip().endswith("?") or key in seen:
            continue  # a question asked before is nothing the person told us
        seen.add(key)
        out.append(scored)
    return out


def _told(scored: ScoredMemory) -> str:
    """The memory said back: "You told me your sister Ana lives in Lisbon."."""
    fact = second_person(recalled_text(scored))
    if scored.memory.kind == "note":
        return f"You asked me to remember that {fact}."
    return f"You told me {fact}."


class TemplateResponder:
    """Offline and deterministic: the same request at the same time always gets the same reply.

    ``clock`` gives the current time (UTC); the greeting depends on how long the person was away.
    """

    def __init__(self, *, clock: Callable[[], datetime] | None = None, greet_after: timedelta = GREET_AFTER):
        self._clock = clock or (lambda: datetime.now(UTC))
        self._greet_after = greet_after

    async def reply(self, request: ReplyRequest) -> str:
        parts = [greeting] if (greeting := self._greeting(request)) else []
        parts += self._acknowledgements(request.learned)
        answer = self._preference_answer(request)
        if answer:
            parts.append(answer)
        elif (memory_part := self._memory_answer(request)) is not None:
            parts.append(memory_part)
        if not parts or parts == [greeting]:
            parts.append(self._follow_up(request.message))
        return " ".join(parts)

    async def close(self) -> None:
        return None

    def _greeting(self, request: ReplyRequest) -> str:
        """Hello on meeting, and again only after the person was away (``greet_after``)."""
        name = request.name
        ctx = request.context
        if ctx.conversations_count == 0:
            return f"Hi {name}, nice to meet you!"
        if self._clock() - ctx.last_seen < self._greet_after:
            return ""
        tier = persona.friendship_tier(ctx.friendship_level)
        return {
            "new face": f"Hello again, {name}.",
            "acquaintance": f"Hey {name}, good to see you again!",
            "friend": f"Hey {name}! Always nice to hear from you.",
            "good friend": f"{name}, my good friend! Welcome back.",
            "best friend": f"{name}! My best friend is here!",
        }[tier]

    @staticmethod
    def _acknowledgements(learned: Mapping[str, str | None]) -> list[str]:
        lines = []
        for key, value in learned.items():
            if value is None:
                continue
            if key == persona.NAME_KEY:
                lines.append(f"I'll call you {value} from now on.")
            elif key == persona.LIKES_KEY:
                lines.append(f"Noted, you like {value.rsplit(', ', 1)[-1]}.")
            elif key == persona.DISLIKES_KEY:
                lines.append(f"Noted, you don't like {value.rsplit(', ', 1)[-1]}.")
            else:
                lines.append(f"I'll remember that your {key} is {value}.")
        return lines

    @staticmethod
    def _preference_answer(request: ReplyRequest) -> str:
        if _SUMMARY.search(request.message):
            return ""  # the summary below tells the preferences with the facts
        words = set(request.message.lower().replace("?", " ").split())
        if not words & {"what", "what's", "whats", "remember", "know", "do", "who"}:
            return ""
        answers = []
        for key, value in request.context.preferences.items():
            if key in request.learned:
                continue
            asks_own_name = "my name" in request.message.lower() or {"who", "am", "i"} <= words
            if key == persona.NAME_KEY and asks_own_name:
                answers.append(f"your name is {value}")
            elif key == persona.LIKES_KEY and words & {"like", "love", "likes"}:
                answers.append(f"you like {value}")
            elif key.startswith("favourite ") and key.split()[-1] in words:
                answers.append(f"your {key} is {value}")
        return f"You told me {' and '.join(answers)}." if answers else ""

    @staticmethod
    def _memory_answer(request: ReplyRequest) -> str | None:
        """A question about the person gets the fact that answers it; "what do you know about
        me" a summary; other chat a memory only when it is clearly on topic."""
        message = request.message
        statements = _statements(request)
        if _SUMMARY.search(message):
            return _summary(request, statements)
        if is_question_about_me(message):
            best = statements[0] if statements else None
            if best is not None and relevant(best, message, ANSWERABLE):
                return _told(best)
            return None
        for scored in statements:
            if relevant(scored, message):
                quote = shorten(recalled_text(scored), QUOTE_LENGTH)
                if scored.memory.kind == "exchange":
                    return f'Last time you told me "{quote}".'
                return f'You asked me to remember "{quote}".'
        return None

    @staticmethod
    def _follow_up(message: str) -> str:
        if message.rstrip().endswith("?"):
            return "Good question! I'm a simple offline bot, but I'll remember you asked."
        choices = ("Tell me more!", "I'll remember that.", "Noted!", "Interesting, go on.")
        return choices[zlib.crc32(message.encode()) % len(choices)]


def _summary(request: ReplyRequest, statements: list[ScoredMemory]) -> str:
    """ "What do you know about me": the preferences, then the best distinct facts."""
    prefs = request.context.preferences
    known = [
        f"your {key} is {value}"
        for key, value in sorted(prefs.items())
        if key not in (persona.LIKES_KEY, persona.DISLIKES_KEY)
    ]
    if likes := prefs.get(persona.LIKES_KEY):
        known.append(f"you like {likes}")
    if dislikes := prefs.get(persona.DISLIKES_KEY):
        known.append(f"you don't like {dislikes}")
    known += [second_person(recalled_text(s)) for s in statements[:SUMMARY_FACTS]]
    if not known:
        return "You haven't told me much about yourself yet. Tell me something!"
    return "Here's what I know about you: " + "; ".join(known) + "."


def _shared_words(a: str, b: str) -> set[str]:
    """Meaningful words two texts share: a memory is only quoted when it is on topic."""
    return (set(_WORD.findall(a.lower())) & set(_WORD.findall(b.lower()))) - _STOPWORDS


class ResponderError(Exception):
    """The chat-completions endpoint failed or answered something unusable."""


DEFAULT_PERSONA = "You are memory-bot, a friendly chat companion with a long-term memory."
# The guild a reply is for, set by the chat cog around one pipeline call: the pipeline and its
# ReplyRequest are Discord-free, yet a guild may give the LLM its own persona.
reply_guild: ContextVar[int | None] = ContextVar("reply_guild", default=None)


@dataclass(frozen=True, slots=True)
class SystemPrompts:
    """The persona line of the LLM prompt: one default, optionally one per guild."""

    default: str = DEFAULT_PERSONA
    per_guild: Mapping[int, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, default: str, entries: tuple[str, ...]) -> SystemPrompts:
        """``entries`` are ``"GUILD_ID=prompt"`` strings (bot.guild_system_prompts)."""
        per_guild: dict[int, str] = {}
        for entry in entries:
            guild, sep, prompt = entry.partition("=")
            if not sep or not guild.strip().isdigit() or not prompt.strip():
                raise ConfigError(
                    f"setting bot.guild_system_prompts entry {entry!r} is invalid: "
                    'expected GUILD_ID=prompt, e.g. "123456789=You are a pirate."'
                )
            per_guild[int(guild)] = prompt.strip()
        return cls(default.strip() or DEFAULT_PERSONA, per_guild)

    def for_guild(self, guild_id: int | None) -> str:
        return self.per_guild.get(guild_id, self.default) if guild_id is not None else self.default


class OpenAICompatibleResponder:
    """Calls ``{base_url}/chat/completions``; on any failure, logs it and uses ``fallback``.

    A circuit breaker stops calling an endpoint that failed ``breaker_failures`` times in a row
    for ``breaker_cooldown`` seconds, so an outage costs the timeout only a few times. Logged
    errors never carry the API key (or any bearer token) even when the server echoes it.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_tokens: int = 400,
        fallback: Responder | None = None,
        breaker_failures: int = 3,
        breaker_cooldown: float = 60.0,
        prompts: SystemPrompts | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_tokens = max_tokens
        self.fallback: Responder = fallback or TemplateResponder()
        self.breaker = CircuitBreaker(breaker_failures, breaker_cooldown, clock=clock)
        self.prompts = prompts or SystemPrompts()
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never show the key
        return f"OpenAICompatibleResponder(url={redact(self.url)!r}, model={self.model!r})"

    async def reply(self, request: ReplyRequest) -> str:
        if not self.breaker.allow():
            log.debug("LLM endpoint %s is failing: template reply", redact(self.url))
            return await self.fallback.reply(request)
        messages = build_messages(request, system_prompt=self.prompts.for_guild(reply_guild.get()))
        try:
            text = await self._complete(messages)
        except asyncio.CancelledError:
            self.breaker.abandoned()  # a cancelled trial proves nothing either way
            raise
        except (aiohttp.ClientError, TimeoutError, ResponderError) as exc:
            self.breaker.failed()
            opened = self.breaker.state is not BreakerState.CLOSED
            log.warning(
                "LLM endpoint %s failed (%s: %s); answering with the template responder%s",
                redact(self.url),
                type(exc).__name__,
                redact(str(exc), [self._api_key]),
                f" for the next {self.breaker.cooldown:g} s" if opened else "",
            )
            return await self.fallback.reply(request)
        self.breaker.succeeded()
        return text

    async def _complete(self, messages: list[dict[str, str]]) -> str:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        body = {"model": self.model, "messages": messages, "max_tokens": self._max_tokens}
        async with self._session.post(self.url, json=body, headers=headers) as response:
            if response.status != 200:
                detail = shorten(redact(await response.text(), [self._api_key]), 200)
                raise ResponderError(f"HTTP {response.status}: {detail}")
            try:
                data: Any = await response.json(content_type=None)
                content = data["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise ResponderError(f"unexpected response shape: {type(exc).__name__}") from exc
        if not isinstance(content, str) or not content.strip():
            raise ResponderError("the reply was empty")
        return content.strip()

    async def close(self) -> None:
        await self.fallback.close()
        if self._session is not None:
            await self._session.close()


def build_messages(request: ReplyRequest, *, system_prompt: str = DEFAULT_PERSONA) -> list[dict[str, str]]:
    """The chat-completions messages: persona, what is known, relevant memories, recent turns."""
    ctx = request.context
    known = persona.describe_preferences(ctx.preferences)
    lines = [
        system_prompt,
        "Answer briefly (under 1,500 characters), warmly, and use what you remember when relevant.",
        f"You are talking with {request.name}; you have had {ctx.conversations_count} earlier "
        f"conversations and your friendship level is {ctx.friendship_level}/100 "
        f"({persona.friendship_tier(ctx.friendship_level)}).",
    ]
    if known:
        lines.append("What they told you about themselves:")
        lines += [f"- {line}" for line in known]
    if request.memories:
        lines.append("Memories relevant to this message, most relevant first:")
        for scored in request.memories:
            memory = scored.memory
            lines.append(f"- [{memory.created_at:%Y-%m-%d}] ({memory.kind}) {memory.text}")
    messages = [{"role": "system", "content": "\n".join(lines)}]
    for exchange in ctx.recent[-RECENT_IN_PROMPT:]:
        messages.append({"role": "user", "content": exchange.message})
        messages.append({"role": "assistant", "content": exchange.response})
    messages.append({"role": "user", "content": request.message})
    return messages


def llm_api_key(environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    for name in API_KEY_VARIABLES:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def build_responder(settings: Settings, environ: Mapping[str, str] | None = None) -> Responder:
    """The responder the [bot] settings name; the API key comes only from the environment."""
    bot = settings.bot
    if bot.responder == "openai":
        return OpenAICompatibleResponder(
            bot.llm_base_url,
            bot.llm_model,
            api_key=llm_api_key(environ),
            timeout=bot.llm_timeout,
            max_tokens=bot.llm_max_tokens,
            breaker_failures=bot.llm_breaker_failures,
            breaker_cooldown=bot.llm_breaker_cooldown,
            prompts=SystemPrompts.from_settings(bot.system_prompt, bot.guild_system_prompts),
        )
    return TemplateResponder()
