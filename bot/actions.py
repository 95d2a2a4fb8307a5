"""The memory commands (remember, recall, forget, profile, export, memory on|off|list|share,
privacy), free of Discord.

Each acts on the caller's own data only: the user id always comes from the caller, never from
the command's arguments. Expected problems raise ActionError (or a MemoryBotError), whose
friendly text ``bot.formatting.friendly_error`` gives.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from bot import persona
from bot.formatting import ActionError, shorten
from bot.privacy import (
    DM,
    MEMORY_KEY,
    SHARE_KEY,
    Place,
    describe_scope,
    public_preferences,
    remembering,
)
from bot.responder import relevant
from memory import Memory, MemoryNotFoundError, MemorySystem, UserNotFoundError

RECALL_RESULTS = 5
RECALL_TEXT = 300
LIST_PAGE = 10
CONFIRM_SECONDS = 60.0
CONFIRM_WORD = "confirm"


class MemoryActions:
    """One method per command; ``prefix`` is only used in the hints of the replies."""

    def __init__(
        self,
        memory: MemorySystem,
        *,
        clock: Callable[[], float] = time.monotonic,
        confirm_seconds: float = CONFIRM_SECONDS,
    ) -> None:
        self.memory = memory
        self._clock = clock
        self._confirm_seconds = confirm_seconds
        self._pending_forget_all: dict[str, float] = {}

    async def remember(
        self, user_id: str | int, text: str, *, source_id: str | None = None, place: Place = DM
    ) -> str:
        """Store a note in the scope of ``place`` (where the command was used)."""
        text = text.strip()
        if not text:
            raise ActionError("Tell me what to remember, e.g. `remember my cat is called Miso`.")
        limit = self.memory.settings.limits.max_text_length
        if len(text) > limit:
            raise ActionError(f"That's too long to remember: keep it under {limit:,} characters.")
        if not remembering(await self.memory.get_user_context(user_id)):
            raise ActionError("Memory is off for you, so I won't store that; `memory on` turns it back on.")
        memory = await self.memory.save_memory(
            user_id,
            text,
            kind="note",
            source_id=source_id,
            metadata={"via": "command", **place.metadata()},
            scope=place.scope,
        )
        return f"Got it, I'll remember that (memory #{memory.id})."

    async def recall(self, user_id: str | int, query: str, *, scopes: frozenset[str] | None = None) -> str:
        """The best matches said in ``scopes`` (where the answer is shown may see; None: all)."""
        query = query.strip()
        if not query:
            raise ActionError("Tell me what to look for, e.g. `recall cat`.")
        limit = self.memory.settings.limits.max_text_length
        results = await self.memory.retrieve_memory(
            user_id, shorten(query, limit), RECALL_RESULTS, scopes=scopes
        )
        # No quoted nonsense: a query that matches nothing well gets no memory.
        results = [scored for scored in results if relevant(scored, query)]
        if not results:
            return "I don't remember anything about that yet."
        return "\n".join(["Here's what I remember:", *(_memory_line(s.memory) for s in results)])

    async def list_memories(
        self, user_id: str | int, page: int = 1, *, scopes: frozenset[str] | None = None
    ) -> str:
        """One page of what is stored about the person: ids, dates and where it was said."""
        if page < 1:
            raise ActionError("Pages start at 1, e.g. `memory list 2`.")
        memories = await self.memory.get_memories(
            user_id, limit=LIST_PAGE + 1, offset=(page - 1) * LIST_PAGE, scopes=scopes
        )
        if not memories:
            return "Nothing stored about you." if page == 1 else f"There is no page {page}."
        lines = [f"What I have stored about you (page {page}):"]
        lines += [_memory_line(m) for m in memories[:LIST_PAGE]]
        if len(memories) > LIST_PAGE:
            lines.append(f"More: `memory list {page + 1}`. Forget one with `forget <id>`.")
        else:
            lines.append("Forget one with `forget <id>`, or everything with `forget all`.")
        return "\n".join(lines)

    async def set_memory(self, user_id: str | int, on: bool) -> str:
        """Turn remembering on or off for the person (stored with their context)."""
        await self.memory.set_preference(user_id, MEMORY_KEY, None if on else "off", actor="bot")
        if on:
            return "Memory is on: I'll remember our conversations again."
        return (
            "Memory is off: from now on I store nothing of what you say to me (what I already "
            "have stays until you `forget` it). `memory on` turns it back on."
        )

    async def set_share(self, user_id: str | int, on: bool) -> str:
        """Opt in to (or out of) using the person's memories across the servers they share."""
        await self.memory.set_preference(user_id, SHARE_KEY, "on" if on else None, actor="bot")
        if on:
            return (
                "Sharing is on: in a server I may use what you told me in your other servers "
                "(never what you said in DMs, and not in servers whose operator turned it off)."
            )
        return "Sharing is off: in a server I use only what you said in that server."

    def privacy(self) -> str:
        """What is stored, where, for how long, how to delete it, and what goes to an LLM."""
        settings = self.memory.settings
        days = settings.bot.retention_days
        kept = (
            f"conversations for {days} days, notes until you delete them" if days else "until you delete it"
        )
        llm = (
            f"Replies are written by an LLM at {settings.bot.llm_base_url}: each message is sent "
            "there with your name, preferences, a few recent exchanges and the memories relevant "
            "to it (only those visible where you wrote)."
            if settings.bot.responder == "openai"
            else "Replies are written on this machine; nothing is sent to an outside service."
        )
        return "\n".join(
            [
                "Privacy:",
                "- What: our conversations, notes you ask me to remember, and preferences I "
                "learn (your name, likes, dislikes), each with where it was said.",
                f"- Where: in this bot's database on its operator's machine, kept {kept}.",
                "- Who sees it: in a server I use only that server's memories (others only after "
                "`memory share on`); what you say in DMs stays in DMs.",
                "- Control: `memory off` / `memory on`, `memory list`, `forget <id>`, "
                "`forget all`, `export`. Deleting or editing a message updates what I remember.",
                f"- {llm}",
            ]
        )

    async def forget(
        self, user_id: str | int, target: str, confirm: str | None = None, *, prefix: str = "/"
    ) -> str:
        target = target.strip().lower()
        if target == "all":
            return await self._forget_all(user_id, confirm, prefix)
        try:
            memory_id = int(target.removeprefix("#"))
        except ValueError:
            raise ActionError(
                f"`{prefix}forget` takes a memory id from `{prefix}recall` (like 12), or `all`."
            ) from None
        if memory_id < 1:
            raise ActionError("Memory ids are positive numbers; `recall` shows yours.")
        try:
            await self.memory.forget_memory(user_id, memory_id)
        except MemoryNotFoundError:
            raise ActionError(
                f"I couldn't find memory #{memory_id} among yours; `{prefix}recall` shows your ids."
            ) from None
        return f"Forgotten: memory #{memory_id} is gone."

    async def _forget_all(self, user_id: str | int, confirm: str | None, prefix: str) -> str:
        key = str(user_id)
        now = self._clock()
        self._pending_forget_all = {k: until for k, until in self._pending_forget_all.items() if until > now}
        if (confirm or "").strip().lower() == CONFIRM_WORD and key in self._pending_forget_all:
            del self._pending_forget_all[key]
            known = await self.memory.forget_user(user_id, actor="bot")
            if not known:
                return "There was nothing to forget: I had nothing stored about you."
            return "Done: I've forgotten everything about you. Nice to meet you, whoever you are!"
        self._pending_forget_all[key] = now + self._confirm_seconds
        return (
            "This erases everything I know about you: memories, preferences and our history. "
            f"To go ahead, send `{prefix}forget all {CONFIRM_WORD}` within "
            f"{self._confirm_seconds:.0f} seconds."
        )

    async def profile(self, user_id: str | int, *, place: Place | None = None) -> str:
        """What is known of the person, as may be shown at ``place`` (None: in private)."""
        context = await self.memory.get_user_context(user_id)
        count = await self.memory.count_memories(user_id)
        name = context.preferences.get(persona.NAME_KEY) or context.display_name or "(no name yet)"
        lines = [
            f"Profile of {name}",
            f"Conversations: {context.conversations_count}",
            f"Friendship: {context.friendship_level}/100 "
            f"({persona.friendship_tier(context.friendship_level)})",
            f"Memories: {count}",
            f"Memory: {'on' if remembering(context) else 'off'}",
        ]
        prefs = persona.describe_preferences(public_preferences(context.preferences, place))
        lines.append("Preferences:" + ("" if prefs else " none yet"))
        lines += [f"- {line}" for line in prefs]
        return "\n".join(lines)

    async def export(self, user_id: str | int) -> tuple[str, bytes]:
        """A file name and the person's own data as indented JSON."""
        try:
            data = await self.memory.export_user(user_id)
        except UserNotFoundError:
            raise ActionError("I don't have anything stored about you yet.") from None
        safe_id = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(user_id))
        return f"memory-export-{safe_id}.json", orjson.dumps(data, option=orjson.OPT_INDENT_2)


def _memory_line(memory: Memory) -> str:
    text = shorten(" ".join(memory.text.split()), RECALL_TEXT)
    where = describe_scope(memory.scope)
    return f"#{memory.id} ({memory.kind}, {memory.created_at:%Y-%m-%d}, {where}): {text}"
