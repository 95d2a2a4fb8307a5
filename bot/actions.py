"""The memory commands (remember, recall, forget, profile, export), free of Discord.

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
from memory import MemoryNotFoundError, MemorySystem, UserNotFoundError

RECALL_RESULTS = 5
RECALL_TEXT = 300
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

    async def remember(self, user_id: str | int, text: str, *, source_id: str | None = None) -> str:
        text = text.strip()
        if not text:
            raise ActionError("Tell me what to remember, e.g. `remember my cat is called Miso`.")
        limit = self.memory.settings.limits.max_text_length
        if len(text) > limit:
            raise ActionError(f"That's too long to remember: keep it under {limit:,} characters.")
        memory = await self.memory.save_memory(
            user_id, text, kind="note", source_id=source_id, metadata={"via": "command"}
        )
        return f"Got it, I'll remember that (memory #{memory.id})."

    async def recall(self, user_id: str | int, query: str) -> str:
        query = query.strip()
        if not query:
            raise ActionError("Tell me what to look for, e.g. `recall cat`.")
        limit = self.memory.settings.limits.max_text_length
        results = await self.memory.retrieve_memory(user_id, shorten(query, limit), RECALL_RESULTS)
        if not results:
            return "I don't remember anything about that yet."
        lines = ["Here's what I remember:"]
        for scored in results:
            memory = scored.memory
            text = shorten(" ".join(memory.text.split()), RECALL_TEXT)
            lines.append(f"#{memory.id} ({memory.kind}, {memory.created_at:%Y-%m-%d}): {text}")
        return "\n".join(lines)

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

    async def profile(self, user_id: str | int) -> str:
        context = await self.memory.get_user_context(user_id)
        count = await self.memory.count_memories(user_id)
        name = context.preferences.get(persona.NAME_KEY) or context.display_name or "(no name yet)"
        lines = [
            f"Profile of {name}",
            f"Conversations: {context.conversations_count}",
            f"Friendship: {context.friendship_level}/100 "
            f"({persona.friendship_tier(context.friendship_level)})",
            f"Memories: {count}",
        ]
        prefs = persona.describe_preferences(context.preferences)
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
