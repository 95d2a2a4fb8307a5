"""Friendship tiers and simple preference extraction from what people say.

The friendship level itself rises in the library (``limits.friendship_step`` per conversation,
bounded at 100); this module names the tiers and finds preferences such as
"my favourite food is pizza", "I love jazz" or "call me Sam".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_LEVEL = 100
MAX_VALUE_LENGTH = 100
MAX_LIST_ITEMS = 10
NAME_KEY = "name"
LIKES_KEY = "likes"
DISLIKES_KEY = "dislikes"

TIERS: tuple[tuple[int, str], ...] = (
    (90, "best friend"),
    (60, "good friend"),
    (30, "friend"),
    (10, "acquaintance"),
    (0, "new face"),
)

_END = r"(?=[.!?,;:\n]|\s+(?:and|but|because|so)\s|$)"
_NAME = re.compile(
    r"\b(?:call me|my name is|my name's)\s+([A-Za-z][\w'-]{0,30})(?:\s+([A-Za-z][\w'-]{0,30}))?",
    re.IGNORECASE,
)
_FAVOURITE = re.compile(
    r"\bmy\s+(?:favou?rite|fav)\s+([a-z][a-z ]{0,40}?)\s+(?:is|are|=)\s+(.+?)" + _END,
    re.IGNORECASE,
)
_DISLIKE = re.compile(
    r"\bi\s+(?:really\s+)?(?:hate|dislike|can't stand|don't like|do not like)\s+(.+?)" + _END,
    re.IGNORECASE,
)
_LIKE = re.compile(
    r"\bi\s+(?:really\s+|also\s+|just\s+)?(?:love|like|enjoy|adore)\s+(.+?)" + _END,
    re.IGNORECASE,
)
_NOT_LIKES = frozenset({"it", "that", "this", "you", "them", "him", "her", "to"})
_NOT_NAMES = frozenset({"a", "an", "the", "not", "so", "very", "just", "here", "back", "later"})


@dataclass(frozen=True, slots=True)
class Preference:
    key: str
    value: str


def friendship_tier(level: int) -> str:
    """The name of the tier a friendship level (clamped to 0-100) falls in."""
    level = max(0, min(MAX_LEVEL, level))
    return next(name for floor, name in TIERS if level >= floor)


def _clean(value: str) -> str:
    value = re.sub(r"\s+", " ", value).strip(" \"'`*_~")
    return value[:MAX_VALUE_LENGTH].rstrip()


def extract_preferences(text: str) -> list[Preference]:
    """Preferences stated in ``text``, in the order found; nothing when none is stated."""
    found: list[Preference] = []
    for match in _NAME.finditer(text):
        name = _clean(match.group(1))
        surname = match.group(2)
        if surname and surname[0].isupper():
            name = f"{name} {_clean(surname)}"
        if name and name.split()[0].lower() not in _NOT_NAMES:
            found.append(Preference(NAME_KEY, name[:1].upper() + name[1:]))
    for match in _FAVOURITE.finditer(text):
        subject = " ".join(match.group(1).lower().split())
        value = _clean(match.group(2))
        if subject and value:
            found.append(Preference(f"favourite {subject}"[:64], value))
    disliked_spans = []
    for match in _DISLIKE.finditer(text):
        disliked_spans.append(match.span())
        value = _clean(match.group(1))
        if value:
            found.append(Preference(DISLIKES_KEY, value))
    for match in _LIKE.finditer(text):
        if any(start <= match.start() < end for start, end in disliked_spans):
            continue
        value = _clean(match.group(1))
        if value and value.split()[0].lower() not in _NOT_LIKES:
            found.append(Preference(LIKES_KEY, value))
    return found


def _as_list(value: Any) -> list[str]:
    if not isinstance(value, str) or not value:
        return []
    return [item.strip() for item in value.split(",") if item.strip()]


def _add_item(items: list[str], value: str) -> list[str]:
    kept = [item for item in items if item.lower() != value.lower()]
    kept.append(value)
    return kept[-MAX_LIST_ITEMS:]


def _remove_item(items: list[str], value: str) -> list[str]:
    return [item for item in items if item.lower() != value.lower()]


def preference_changes(current: Mapping[str, Any], found: list[Preference]) -> dict[str, str | None]:
    """The ``set_preference`` calls that apply ``found`` to ``current`` (None removes a key).

    Likes and dislikes are kept as comma-separated lists; liking a thing drops it from the
    dislikes and the other way round. Keys whose value would not change are left out.
    """
    state: dict[str, Any] = dict(current)
    for pref in found:
        value = pref.value.replace(",", " ")
        if pref.key in (LIKES_KEY, DISLIKES_KEY):
            other = DISLIKES_KEY if pref.key == LIKES_KEY else LIKES_KEY
            state[pref.key] = ", ".join(_add_item(_as_list(state.get(pref.key)), value))
            remaining = _remove_item(_as_list(state.get(other)), value)
            state[other] = ", ".join(remaining) if remaining else None
        else:
            state[pref.key] = pref.value
    changes: dict[str, str | None] = {}
    for key, value in state.items():
        if value != current.get(key) and not (value is None and key not in current):
            changes[key] = value
    return changes


def describe_preferences(preferences: Mapping[str, Any]) -> list[str]:
    """One readable line per preference, name first."""
    lines = []
    for key in sorted(preferences, key=lambda k: (k != NAME_KEY, k)):
        lines.append(f"{key}: {preferences[key]}")
    return lines
