"""UserContext: the frozen, deeply immutable state kept for one person.

Because no part of it can change, it is handed out without copying and read without locks;
every change builds a new object through ``copy_with``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from memory.errors import DataDamagedError, InvalidInputError
from memory.validation import is_utf8

PreferenceValue = str | int | float | bool
MAX_FRIENDSHIP: Final = 100
MAX_PREFERENCE_KEY: Final = 64
MAX_PREFERENCE_VALUE: Final = 500
# The scope of what was stored before scopes existed, and the default of a caller that names
# none: the most private one. Nothing of unknown origin is ever shown where a scope is filtered.
PRIVATE_SCOPE: Final = "dm"


class FrozenMap(Mapping[str, Any]):
    """A read-only, hashable mapping: item assignment and deletion raise TypeError."""

    __slots__ = ("_checked_as_preferences", "_data", "_hash")
    _data: dict[str, Any]
    _hash: int | None
    _checked_as_preferences: bool

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_data", dict(data or {}))
        object.__setattr__(self, "_hash", None)
        object.__setattr__(self, "_checked_as_preferences", False)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            object.__setattr__(self, "_hash", hash(frozenset(self._data.items())))
        assert self._hash is not None
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._data) == dict(other)
        return NotImplemented

    def __setattr__(self, name: str, value: object) -> None:
        raise TypeError("FrozenMap is immutable")

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


_SCALARS = (str, int, float, bool, type(None))


def freeze_json(value: Any) -> Any:
    """A deeply immutable copy of parsed JSON: objects become FrozenMaps, arrays tuples.
    (Scalars are tested first: an isinstance test against the Mapping ABC costs several times
    one against concrete types, and most values are scalars.)"""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, Mapping):
        return FrozenMap({str(k): freeze_json(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze_json(v) for v in value)
    return value


def thaw_json(value: Any) -> Any:
    """The JSON-safe form of a frozen value."""
    if isinstance(value, Mapping):
        return {k: thaw_json(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw_json(v) for v in value]
    return value


def utc(value: datetime, field: str = "time") -> datetime:
    """Aware UTC time; naive times are taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # e.g. datetime.max at UTC-5
        raise InvalidInputError(field, f"{value.isoformat()} is out of range: it has no UTC form") from exc


def parse_time(field: str, value: Any) -> datetime:
    if isinstance(value, datetime):
        return utc(value, field)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidInputError(field, f"must be an ISO 8601 time, got {value!r:.80}") from exc
        return utc(parsed, field)
    raise InvalidInputError(field, f"must be a datetime, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Exchange:
    """One message and the reply to it, and where it came from (so that a forget can find it).

    ``memory_id`` is the exchange memory made from it, ``source_id`` the caller's id of the
    message (a Discord message id): forgetting either removes the exchange too. ``scope`` is
    where it was said (an opaque string such as ``dm`` or ``guild:<id>``); None for an exchange
    stored before scopes existed, which counts as ``PRIVATE_SCOPE``.
    """

    message: str
    response: str
    at: datetime
    memory_id: int | None = None
    source_id: str | None = None
    scope: str | None = None

    @property
    def visible_scope(self) -> str:
        """The scope a filter sees this exchange under."""
        return self.scope if self.scope is not None else PRIVATE_SCOPE

    def to_dict(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "response": self.response,
            "at": self.at.isoformat(),
            "memory_id": self.memory_id,
            "source_id": self.source_id,
            "scope": self.scope,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Exchange:
        if not isinstance(data, Mapping):
            raise InvalidInputError("recent", f"an exchange must be an object, got {type(data).__name__}")
        missing = {"message", "response", "at"} - set(data)
        if missing:
            raise InvalidInputError("recent", f"an exchange lacks {sorted(missing)}")
        for name in ("message", "response"):  # their content is checked where they come in
            if not isinstance(data[name], str):
                got = type(data[name]).__name__
                raise InvalidInputError(f"recent {name}", f"must be a string, got {got}")
        memory_id = data.get("memory_id")
        if memory_id is not None and (isinstance(memory_id, bool) or not isinstance(memory_id, int)):
            raise InvalidInputError("recent", "an exchange's memory_id must be a whole number")
        source_id = data.get("source_id")
        if source_id is not None and not isinstance(source_id, str):
            raise InvalidInputError("recent", "an exchange's source_id must be a string")
        scope = data.get("scope")
        if scope is not None and not isinstance(scope, str):
            raise InvalidInputError("recent", "an exchange's scope must be a string")
        at = parse_time("at", data["at"])
        return cls(data["message"], data["response"], at, memory_id, source_id, scope)


def _check_preference(key: Any, value: Any) -> None:
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_PREFERENCE_KEY or not is_utf8(key):
        raise InvalidInputError(
            "preference key",
            f"must be a non-empty string of at most {MAX_PREFERENCE_KEY} characters",
        )
    if not isinstance(value, str | int | float | bool):
        raise InvalidInputError(
            f"preference {key!r}", f"must be a string, number or bool, got {type(value).__name__}"
        )
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise InvalidInputError(f"preference {key!r}", "a whole number must fit in 64 bits")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError(f"preference {key!r}", "a number must be finite")
    if isinstance(value, str) and (
        len(value) > MAX_PREFERENCE_VALUE or "\x00" in value or not is_utf8(value)
    ):
        raise InvalidInputError(
            f"preference {key!r}", f"must be at most {MAX_PREFERENCE_VALUE} characters, no NUL"
        )


@dataclass(frozen=True, slots=True)
class UserContext:
    """What the bot knows of one person right now; ``version`` rises by one on every change."""

    user_id: str
    display_name: str
    conversations_count: int
    friendship_level: int
    preferences: FrozenMap
    recent: tuple[Exchange, ...]
    first_seen: datetime
    last_seen: datetime
    version: int

    def __post_init__(self) -> None:
        # Coerce the mutable forms a caller may pass into their frozen forms, then validate.
        if not isinstance(self.user_id, str) or not self.user_id:
            raise InvalidInputError("user_id", "must be a non-empty string")
        preferences: object = self.preferences
        if not isinstance(preferences, FrozenMap):
            if not isinstance(preferences, Mapping):
                raise InvalidInputError("preferences", "must be a mapping")
            object.__setattr__(self, "preferences", FrozenMap(preferences))
        recent: object = self.recent
        if not isinstance(recent, tuple):
            if not isinstance(recent, list):
                raise InvalidInputError("recent", "must be a tuple or list of exchanges")
            object.__setattr__(self, "recent", tuple(recent))
        prefs = self.preferences
        if not prefs._checked_as_preferences:  # immutable, so checking once is enough
            for key, value in prefs.items():
                _check_preference(key, value)
            object.__setattr__(prefs, "_checked_as_preferences", True)
        if not all(isinstance(e, Exchange) for e in self.recent):
            raise InvalidInputError("recent", "must hold Exchange objects")
        if (
            not isinstance(self.display_name, str)
            or len(self.display_name) > 100
            or not is_utf8(self.display_name)
        ):
            raise InvalidInputError("display_name", "must be a string of at most 100 characters")
        for name in ("conversations_count", "version"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
                raise InvalidInputError(name, "must be a whole number from 0 to 2**63 - 1")
        level = self.friendship_level
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= MAX_FRIENDSHIP:
            raise InvalidInputError("friendship_level", f"must be a whole number from 0 to {MAX_FRIENDSHIP}")
        for name in ("first_seen", "last_seen"):
            value = getattr(self, name)
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise InvalidInputError(name, "must be a timezone-aware datetime")

    @classmethod
    def new(cls, user_id: str, now: datetime) -> UserContext:
        return cls(user_id, "", 0, 0, FrozenMap(), (), now, now, 0)

    def copy_with(self, **changes: Any) -> UserContext:
        """A new, validated context with ``changes`` applied; this one is left as it was."""
        unknown = set(changes) - _FIELD_NAMES
        if unknown:
            raise InvalidInputError("copy_with", f"unknown field(s) {sorted(unknown)}")
        if "user_id" in changes and changes["user_id"] != self.user_id:
            raise InvalidInputError("user_id", "cannot be changed")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; ``from_dict`` gives back an equal context."""
        return {
            "user_id": self.user_id,
            "display_name": self.display_name,
            "conversations_count": self.conversations_count,
            "friendship_level": self.friendship_level,
            "preferences": dict(self.preferences),
            "recent": [e.to_dict() for e in self.recent],
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "version": self.version,
        }

    def to_json(self) -> bytes:
        """``to_dict`` as JSON, made by orjson straight from the dataclasses (the hot path)."""
        return orjson.dumps(self, default=_plain)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UserContext:
        if not isinstance(data, Mapping):
            raise InvalidInputError("context", f"must be an object, got {type(data).__name__}")
        missing = _FIELD_NAMES - set(data)
        if missing:
            raise InvalidInputError("context", f"lacks field(s) {sorted(missing)}")
        recent = data["recent"]
        if not isinstance(recent, list | tuple):
            raise InvalidInputError("recent", "must be a list")
        if not isinstance(data["preferences"], Mapping):
            raise InvalidInputError("preferences", "must be an object")
        return cls(
            user_id=data["user_id"],
            display_name=data["display_name"],
            conversations_count=data["conversations_count"],
            friendship_level=data["friendship_level"],
            preferences=FrozenMap(data["preferences"]),
            recent=tuple(Exchange.from_dict(e) for e in recent),
            first_seen=parse_time("first_seen", data["first_seen"]),
            last_seen=parse_time("last_seen", data["last_seen"]),
            version=data["version"],
        )


def _plain(value: object) -> object:
    if isinstance(value, FrozenMap):
        return value._data
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


_FIELD_NAMES: Final = frozenset(f.name for f in dataclasses.fields(UserContext))


# -- reading what was stored -----------------------------------------------------------------


@contextmanager
def stored_row(file: Path, row: str) -> Iterator[None]:
    """Turn a stored row that does not parse or validate into DataDamagedError naming ``file``
    and ``row``: bytes read back from disk that are wrong are damage, never a caller's bad input."""
    try:
        yield
    except ROW_DAMAGE as exc:
        raise damaged_row(file, row, exc) from exc


# What a stored row that does not parse or validate raises (orjson.JSONDecodeError is a ValueError).
ROW_DAMAGE = (ValueError, TypeError, KeyError)


def damaged_row(file: Path, row: str, exc: Exception) -> DataDamagedError:
    """The error for ``row`` of ``file`` that does not parse (``stored_row``'s, for a reader
    that catches ``ROW_DAMAGE`` itself on a hot path)."""
    return DataDamagedError(
        f"{file} is damaged: {row} does not parse ({exc}). The rest of the file may be sound: "
        f"keep a copy of it, then restore it from a backup or try `sqlite3 {file} .recover`",
        file,
    )


def parse_stored_json(raw: str | bytes, file: Path, row: str) -> Any:
    """The one parse of JSON read back from a data file (bytes: invalid UTF-8 is damage too)."""
    with stored_row(file, row):
        return orjson.loads(raw)


def stored_context(raw: str | bytes, file: Path, row: str) -> UserContext:
    """A context read back from ``file``; DataDamagedError if it does not parse or validate."""
    data = parse_stored_json(raw, file, row)
    with stored_row(file, row):
        return UserContext.from_dict(data)
