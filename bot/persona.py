"""Friendship tiers and simple preference extraction from what people say.

The friendship level itself rises in the library (``limits.friendship_step`` per conversation,
bounded at 100); this module names the tiers and finds preferences such as
"my favourite food is pizza", "I love jazz" or "call me Sam".

Extraction must not invent: a text is cut into clauses, questions and suppositions are
dropped ("Do you think I like pizza?"), and each clause is read by the rules of one table,
``RULES``, each row tested by examples in tests/test_persona.py.
"""

from __future__ import annotations

import enum
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

# A sentence ends at . ! ? or a line break; a clause at , ; : or a conjunction that starts a new
# thought ("but", "because", "so", or "and" before a new subject): "I love jazz and I hate
# mornings" is two clauses, "I love jazz and hiking" one.
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")
_CLAUSE_BREAK = re.compile(
    r"\s*[,;:]\s*|\s+(?:but|because|cause|cos|so|though|although|while|whereas|since)\s+"
    r"|\s+and\s+(?=(?:i|i'm|i’m|my|you|we|he|she|they|it|it's|that|this)\b)",
    re.IGNORECASE,
)
# A clause starting with these asks or supposes ("Do you think I like pizza?", "If I like it"):
# it states nothing. Fillers before them ("so", "well") are skipped.
_NOT_STATEMENT_STARTS = frozenset(
    """
    do does did would will can could should shall is are am was were may might must
    don't doesn't didn't wouldn't won't can't couldn't shouldn't isn't aren't wasn't weren't
    what what's why how who whom whose when where which if unless whether suppose imagine
    """.split()
)
_FILLERS = frozenset("so and but then well oh ok okay hey hmm um uh also anyway honestly".split())
# Words after "call me" / "I'm" that are not names ("call me maybe", "I'm Back").
_NOT_NAMES = frozenset(
    """
    a an the not so very just here there back later maybe tomorrow tonight today now soon
    sometime anytime anything whenever when if please again crazy old-fashioned sure fine good
    ok okay sorry tired happy sad busy bored hungry ready done new home well great
    """.split()
)
# Objects of like / dislike that are not things: "I hate that my sister lives so far away",
# "I like it", "I love you", "I like to swim", "I hate when it rains".
_NOT_OBJECTS = frozenset(
    """
    it that this you them him her to when how what if where why who being myself yourself
    """.split()
)
_WORD = r"[A-Za-z][\w'’-]{0,30}"
_NAME_WORD = r"[A-Z][\w'’-]{0,30}"  # capitalised, as typed
_ITEM_SEPARATOR = re.compile(r"\s+(?:and|&)\s+|\s*&\s*", re.IGNORECASE)


class ValueKind(enum.Enum):
    """How a rule's ``value`` group becomes preference values."""

    NAME = "a name: its words capitalised, at most two"
    TEXT = "free text, kept whole"
    ITEMS = "a list: 'jazz and hiking' is two items"


@dataclass(frozen=True, slots=True)
class Rule:
    """One way people state a preference, matched within one clause.

    ``key`` may name the pattern's ``subject`` group ("favourite {subject}"); the ``value``
    group is read as ``kind`` says.
    """

    name: str
    key: str
    pattern: re.Pattern[str]
    kind: ValueKind

    def find(self, clause: str) -> list[tuple[tuple[int, int], list[Preference]]]:
        """(span, preferences) for every statement of this rule in ``clause``."""
        found = []
        for match in self.pattern.finditer(clause):
            subject = " ".join((match.groupdict().get("subject") or "").lower().split())
            key = self.key.format(subject=subject)[:64]
            values = _read_value(match.group("value"), self.kind)
            found.append((match.span(), [Preference(key, value) for value in values]))
        return found


# Every rule in one place, tried in this order; a later rule never re-reads a span an earlier
# one matched ("I don't like rain" is a dislike, not also a like). tests/test_persona.py has
# examples for each row.
RULES: tuple[Rule, ...] = (
    Rule(
        "name",
        NAME_KEY,
        re.compile(
            r"(?<!n't )(?<!n’t )(?<!not )(?<!never )\b(?:call me|my name is|my name's)\s+"
            rf"(?P<value>{_WORD}(?:\s+{_WORD})?)",
            re.IGNORECASE,
        ),
        ValueKind.NAME,
    ),
    Rule(
        # Only a capitalised name closing the clause: "I'm Sam", not "I'm tired" or "I'm going".
        "introduction",
        NAME_KEY,
        re.compile(rf"(?i:\bi(?:'m|’m|\s+am))\s+(?P<value>{_NAME_WORD}(?:\s+{_NAME_WORD})?)\s*$"),
        ValueKind.NAME,
    ),
    Rule(
        "favourite",
        "favourite {subject}",
        re.compile(
            r"\bmy\s+(?:favou?rite|fav)\s+(?P<subject>[a-z][a-z ]{0,40}?)\s+(?:is|are|=)\s+(?P<value>.+)",
            re.IGNORECASE,
        ),
        ValueKind.TEXT,
    ),
    Rule(
        "dislike",
        DISLIKES_KEY,
        re.compile(
            r"\bi\s+(?:really\s+|also\s+|just\s+)?"
            r"(?:hate|dislike|detest|can[’']t stand|cannot stand|don[’']t like|do not like)\s+(?P<value>.+)",
            re.IGNORECASE,
        ),
        ValueKind.ITEMS,
    ),
    Rule(
        "like",
        LIKES_KEY,
        re.compile(
            r"\bi\s+(?:really\s+|also\s+|just\s+)?(?:love|like|enjoy|adore)\s+(?P<value>.+)",
            re.IGNORECASE,
        ),
        ValueKind.ITEMS,
    ),
)


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


def _first_word(text: str) -> str:
    words = text.lower().replace("’", "'").split()
    return words[0] if words else ""


def _read_value(raw: str, kind: ValueKind) -> list[str]:
    if kind is ValueKind.NAME:
        words = [_clean(word) for word in raw.split()]
        if not words or not words[0] or words[0].lower() in _NOT_NAMES:
            return []
        # A lower-case second word is not a surname: "call me sam please".
        kept = words[:1] + [w for w in words[1:2] if w[:1].isupper() and w.lower() not in _NOT_NAMES]
        name = " ".join(kept)
        return [name[:1].upper() + name[1:]]
    if kind is ValueKind.TEXT:
        value = _clean(raw)
        return [value] if value else []
    items = [_clean(item) for item in _ITEM_SEPARATOR.split(raw)]
    if not items or _first_word(items[0]) in _NOT_OBJECTS or items[0].lower().startswith("the fact"):
        return []
    return [item for item in items if item and _first_word(item) not in _NOT_OBJECTS]


def clauses(text: str) -> list[str]:
    """The statements in ``text``: its clauses, without the questions and suppositions."""
    kept = []
    for sentence in _SENTENCE.findall(text):
        asks = sentence.rstrip().endswith("?")
        parts = [p for p in _CLAUSE_BREAK.split(sentence.strip().rstrip(".!?").strip()) if p.strip()]
        for i, part in enumerate(parts):
            if asks and i == len(parts) - 1:
                continue  # the clause the question mark closes: "I love jazz, do you?"
            words = part.lower().replace("’", "'").split()
            while words and words[0] in _FILLERS:
                words.pop(0)
            if words and words[0] not in _NOT_STATEMENT_STARTS:
                kept.append(part.strip())
    return kept


def extract_preferences(text: str) -> list[Preference]:
    """Preferences stated in ``text``, in the order stated; nothing when none is stated."""
    found: list[Preference] = []
    for clause in clauses(text):
        taken: list[tuple[int, int]] = []
        for rule in RULES:
            for (start, end), prefs in rule.find(clause):
                if prefs and not any(start < e and s < end for s, e in taken):
                    taken.append((start, end))
                    found += prefs
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
