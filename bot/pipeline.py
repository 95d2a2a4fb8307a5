"""The Discord-free pipeline for one chat message, shared by the chat cog and the console."""

from __future__ import annotations

import logging

from bot import persona
from bot.formatting import shorten
from bot.responder import ReplyRequest, Responder
from memory import MemorySystem

log = logging.getLogger(__name__)
MAX_DISPLAY_NAME = 100


class ChatPipeline:
    """get context -> learn preferences -> retrieve memories -> reply -> update_context."""

    def __init__(self, memory: MemorySystem, responder: Responder) -> None:
        self.memory = memory
        self.responder = responder

    async def handle(
        self,
        user_id: str | int,
        display_name: str,
        text: str,
        *,
        source_id: str | None = None,
    ) -> str:
        """The reply to ``text``; the exchange is stored (from ``source_id``) before this returns.

        Raises the library's MemoryBotError subclasses; callers turn them into friendly replies.
        """
        text = text.strip()
        limits = self.memory.settings.limits
        if not text:
            return "I didn't catch that; say something and I'll answer."
        if len(text) > limits.max_text_length:
            return (
                f"That's a lot to take in! Please keep messages under "
                f"{limits.max_text_length:,} characters ({len(text):,} received)."
            )
        name = display_name.strip()[:MAX_DISPLAY_NAME]
        context = await self.memory.get_user_context(user_id)
        learned = await self._learn(user_id, text, dict(context.preferences))
        if learned:
            context = await self.memory.get_user_context(user_id)
        k = self.memory.settings.bot.memories_in_reply
        memories = await self.memory.retrieve_memory(user_id, text, k) if k else []
        request = ReplyRequest(context, text, tuple(memories), learned, name)
        reply = (await self.responder.reply(request)).strip() or "…"
        await self.memory.update_context(
            user_id,
            text,
            shorten(reply, limits.max_text_length),
            display_name=name or None,
            source_id=source_id,
            actor="bot",
        )
        return reply

    async def _learn(
        self, user_id: str | int, text: str, current: dict[str, object]
    ) -> dict[str, str | None]:
        changes = persona.preference_changes(current, persona.extract_preferences(text))
        room = self.memory.settings.limits.max_preferences - len(current)
        applied: dict[str, str | None] = {}
        for key, value in changes.items():
            if value is not None and key not in current:
                if room <= 0:
                    log.info("user %s has the most preferences allowed; skip %r", user_id, key)
                    continue
                room -= 1
            await self.memory.set_preference(user_id, key, value, actor="bot")
            applied[key] = value
        return applied
