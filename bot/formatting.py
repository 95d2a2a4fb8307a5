"""Discord-free text helpers: message splitting, trimming, and friendly error replies."""

from __future__ import annotations

from memory import (
    InvalidInputError,
    MemoryBotError,
    MemoryNotFoundError,
    SystemClosedError,
    UserNotFoundError,
)

DISCORD_LIMIT = 2000
MAX_PARTS = 4
TRIMMED = "\n… (reply trimmed)"


class ActionError(Exception):
    """An expected problem with a person's request; its message is the friendly reply."""


def shorten(text: str, limit: int, marker: str = "…") -> str:
    """``text`` cut to at most ``limit`` characters, ending with ``marker`` when cut."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(marker))].rstrip() + marker


def split_message(text: str, limit: int = DISCORD_LIMIT, max_parts: int = MAX_PARTS) -> list[str]:
    """Parts of at most ``limit`` characters, cut at line breaks or spaces where possible.

    More than ``max_parts`` parts would flood a channel, so the rest is trimmed with a note.
    """
    if limit < len(TRIMMED) + 1:
        raise ValueError(f"limit must be more than {len(TRIMMED)}, got {limit}")
    parts: list[str] = []
    rest = text.strip()
    while rest:
        if len(parts) == max_parts - 1 and len(rest) > limit:
            parts.append(shorten(rest, limit, TRIMMED))
            break
        if len(rest) <= limit:
            parts.append(rest)
            break
        cut = _cut_point(rest, limit)
        head = rest[:cut].rstrip()
        if head:
            parts.append(head)
        rest = rest[cut:].lstrip()
    return parts


def _cut_point(text: str, limit: int) -> int:
    for separator in ("\n\n", "\n", ". ", " "):
        at = text.rfind(separator, 0, limit)
        if at > limit // 2:
            return at + len(separator) if separator == ". " else at
    return limit


def friendly_error(exc: BaseException) -> str:
    """A short reply for a failed request; the full error belongs in the log."""
    if isinstance(exc, ActionError):
        return str(exc)
    if isinstance(exc, SystemClosedError):
        return "I'm restarting right now; please try again in a moment."
    if isinstance(exc, UserNotFoundError):
        return "I don't have anything stored about you yet."
    if isinstance(exc, MemoryNotFoundError):
        return f"I couldn't find memory #{exc.memory_id} among yours."
    if isinstance(exc, InvalidInputError):
        return f"Sorry, I can't take that: {exc.field} {exc.rule}."
    if isinstance(exc, MemoryBotError):
        return "Something went wrong with my memory; the details are in my log."
    return "Something went wrong on my side; the details are in my log."
