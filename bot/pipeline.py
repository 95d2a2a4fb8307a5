"""The Discord-free pipeline for one chat message, shared by the chat cog and the console."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from bot import persona
from bot.formatting import shorten
from bot.privacy import (
    DM,
    Place,
    needs_dm_key,
    public_preferences,
    remembering,
    visible_exchanges,
    visible_scopes,
    with_origin,
)
from bot.responder import ReplyRequest, Responder
from memory import MemorySystem

log = logging.getLogger(__name__)
MAX_DISPLAY_NAME = 100
MEMORY_OFF_NOTE = "(Memory is off: I'm not keeping anything of this. `memory on` turns it back on.)"


class ChatPipeline:
    """get context -> learn preferences -> retrieve memories -> reply -> update_context.

    Everything runs in the scope of the message's place: the memories and recent exchanges
    used are only those visible there (``bot.privacy.visible_scopes``), and the exchange is
    stored with that scope, unless the person turned memory off (then nothing is stored).
    """

    def __init__(self, memory: MemorySystem, responder: Responder) -> None:
        self.memory = memory
        self.responder = responder
        # Who was told, since memory went off, that nothing is kept (said once, not every time).
        self._told_off: set[str] = set()

    async def handle(
        self,
        user_id: str | int,
        display_name: str,
        text: str,
        *,
        source_id: str | None = None,
        place: Place = DM,
    ) -> str:
        """The reply to ``text`` said at ``place``; the exchange is stored (from ``source_id``,
        in the place's scope) before this returns, unless the person turned memory off.

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
        remember = remembering(context)
        # With memory off nothing is learned either: the reply must not promise to remember.
        found = persona.extract_preferences(text) if remember else []
        # What this message teaches, as seen now, for the reply; the commit below computes it
        # again under the user's lock from the then current preferences, so two quick messages
        # ("I love jazz", "I love rock") both count.
        learned = self._changes(user_id, found, context.preferences, place)
        if learned:
            preview = {**context.preferences, **learned}
            context = context.copy_with(
                preferences={key: value for key, value in preview.items() if value is not None}
            )
        bot_settings = self.memory.settings.bot
        scopes = await visible_scopes(self.memory, user_id, place, bot_settings.no_cross_guild)
        k = bot_settings.memories_in_reply
        memories = await self.memory.retrieve_memory(user_id, text, k, scopes=scopes) if k else []
        shown = context.copy_with(
            recent=visible_exchanges(context.recent, scopes),
            preferences=public_preferences(context.preferences, place),
        )
        request = ReplyRequest(shown, text, tuple(memories), learned, name)
        reply = (await self.responder.reply(request)).strip() or "…"
        if not remember:
            key = str(user_id)
            if key not in self._told_off:
                self._told_off.add(key)
                reply = f"{reply}\n{MEMORY_OFF_NOTE}"
            return reply
        self._told_off.discard(str(user_id))
        await self.memory.update_context(
            user_id,
            text,
            shorten(reply, limits.max_text_length),
            display_name=name or None,
            preferences=lambda current: with_origin(
                self._changes(user_id, found, current, place), place, current
            ),
            source_id=source_id,
            actor="bot",
            scope=place.scope,
            metadata=place.metadata(),
        )
        return reply

    def _changes(
        self,
        user_id: str | int,
        found: list[persona.Preference],
        current: Mapping[str, Any],
        place: Place = DM,
    ) -> dict[str, str | None]:
        """The preference changes ``found`` makes to ``current``, within the per-user limit
        (less the room the DM list may take: see ``bot.privacy.with_origin``)."""
        changes = persona.preference_changes(current, found)
        room = self.memory.settings.limits.max_preferences - len(current)
        if changes and needs_dm_key(place, current):
            room -= 1
        applied: dict[str, str | None] = {}
        for key, value in changes.items():
            if value is not None and key not in current:
                if room <= 0:
                    log.info("user %s has the most preferences allowed; skip %r", user_id, key)
                    continue
                room -= 1
            applied[key] = value
        return applied
