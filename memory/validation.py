"""Checks for caller input: one validator per kind of value, used by every public method.

Each rejection raises ``InvalidInputError`` naming the field and the rule, before anything
is changed; a value that passes can reach SQLite, FAISS and JSON without a foreign error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from memory.errors import InvalidInputError
from memory.settings import LimitSettings, Settings

if TYPE_CHECKING:
    from memory.context import UserContext  # context imports this module

MAX_USER_ID_LENGTH: Final = 128
MAX_ACTOR_LENGTH: Final = 100
MAX_SOURCE_ID_LENGTH: Final = 200
MAX_DISPLAY_NAME_LENGTH: Final = 100
MAX_METADATA_BYTES: Final = 16_384
MAX_INT64: Final = 2**63 - 1
MEMORY_KINDS: Final = frozenset({"exchange", "fact", "note"})
# No chat memory predates the Unix epoch; a day of slack allows for skewed clocks. The
# bounds also keep every later date computation (recency, sessions) far from datetime.max.
EARLIEST_TIME: Final = datetime(1970, 1, 1, tzinfo=UTC)
FUTURE_SLACK: Final = timedelta(days=1)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Compared before str(): Python refuses to print ints beyond 4,300 digits (a ValueError).
_INT_ID_LIMIT: Final = 10**MAX_USER_ID_LENGTH


def _type_name(value: object) -> str:
    return type(value).__name__


def user_id(value: Any) -> str:
    """A user id as a string; Discord's integer ids are converted."""
    if isinstance(value, bool):
        raise InvalidInputError("user_id", "must be a string or an integer, got a bool")
    if isinstance(value, int):
        if value < 0:
            raise InvalidInputError("user_id", "an integer id must not be negative")
        if value >= _INT_ID_LIMIT:
            raise InvalidInputError("user_id", f"an integer id must have at most {MAX_USER_ID_LENGTH} digits")
        return str(value)
    if not isinstance(value, str):
        raise InvalidInputError("user_id", f"must be a string or an integer, got {_type_name(value)}")
    return _name("user_id", value, MAX_USER_ID_LENGTH)


def actor(value: Any) -> str:
    """Who made a change, as recorded in the history (``api``, ``bot``, ``admin``...)."""
    if not isinstance(value, str):
        raise InvalidInputError("actor", f"must be a string, got {_type_name(value)}")
    return _name("actor", value, MAX_ACTOR_LENGTH)


def _name(field: str, value: str, max_length: int) -> str:
    """An identifier: non-blank, bounded, printable, storable."""
    if not value.strip():
        raise InvalidInputError(field, "must not be empty or only whitespace")
    if len(value) > max_length:
        raise InvalidInputError(field, f"must be at most {max_length} characters, got {len(value)}")
    if _CONTROL.search(value):
        raise InvalidInputError(field, "must not contain control characters")
    if not is_utf8(value):
        raise InvalidInputError(field, "must be valid Unicode (it holds a lone surrogate)")
    return value


def is_utf8(value: str) -> bool:
    """False for strings that cannot be stored: lone surrogates have no UTF-8 form."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text(field: str, value: Any, max_length: int, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(field, f"must be a string, got {_type_name(value)}")
    if len(value) > max_length:
        raise InvalidInputError(
            field, f"must be at most {max_length} characters, got {len(value)}; shorten it"
        )
    if "\x00" in value:
        raise InvalidInputError(field, "must not contain NUL bytes")
    if not is_utf8(value):
        raise InvalidInputError(field, "must be valid Unicode (it holds a lone surrogate)")
    if not allow_empty and not value.strip():
        raise InvalidInputError(field, "must not be empty")
    return value


def display_name(value: Any, *, allow_empty: bool = True) -> str:
    return text("display_name", value, MAX_DISPLAY_NAME_LENGTH, allow_empty=allow_empty)


def positive_int(field: str, value: Any, high: int = MAX_INT64) -> int:
    """A whole number from 1 to ``high`` (at most what SQLite's INTEGER holds)."""
    return _whole_number(field, value, 1, high)


def non_negative_int(field: str, value: Any) -> int:
    return _whole_number(field, value, 0, MAX_INT64)


def _whole_number(field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(field, f"must be an integer, got {_type_name(value)}")
    if value < low:
        shown = value if value > -(10**20) else "a larger negative number"
        raise InvalidInputError(field, f"must be at least {low}, got {shown}")
    if value > high:
        raise InvalidInputError(field, f"must be at most {high}")
    return value


def kind(value: Any, field: str = "kind") -> str:
    if not isinstance(value, str) or value not in MEMORY_KINDS:
        shown = repr(value) if isinstance(value, str) else f"a {_type_name(value)}"
        raise InvalidInputError(field, f"must be one of {sorted(MEMORY_KINDS)}, got {shown}")
    return value


def kinds(value: Any) -> frozenset[str] | None:
    """None (every kind) or a non-empty collection of kinds; a bare string is refused."""
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidInputError("kinds", f"must be a list of kinds such as ['fact'], got {_type_name(value)}")
    found = frozenset(kind(k, "kinds") for k in value)
    if not found:
        raise InvalidInputError("kinds", "must name at least one kind; pass None for every kind")
    return found


def timestamp(field: str, value: Any, now: datetime) -> datetime:
    """An aware time from the epoch to a day after ``now``, in UTC."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError(field, "must be a timezone-aware datetime")
    try:
        at: datetime = value.astimezone(UTC)
    except OverflowError as exc:
        raise InvalidInputError(field, "is out of range: it has no UTC form") from exc
    if not EARLIEST_TIME <= at <= now + FUTURE_SLACK:
        raise InvalidInputError(
            field, f"must lie between {EARLIEST_TIME.date()} and a day from now, got {at.isoformat()}"
        )
    return at


def metadata(value: Any) -> dict[str, Any]:
    """A JSON object of at most 16 KiB, as it will be read back (a plain copy)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError("metadata", f"must be a JSON object, got {_type_name(value)}")
    try:
        encoded = orjson.dumps(value)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise InvalidInputError("metadata", f"must be JSON-serialisable: {exc}") from exc
    if len(encoded) > MAX_METADATA_BYTES:
        raise InvalidInputError("metadata", f"must be at most {MAX_METADATA_BYTES // 1024} KiB as JSON")
    decoded: dict[str, Any] = orjson.loads(encoded)
    return decoded


MAX_SCOPE_LENGTH: Final = 100


def scope(value: Any, field: str = "scope") -> str:
    """Where something was said: an opaque non-empty string (the bot uses dm, guild:<id>)."""
    return text(field, value, MAX_SCOPE_LENGTH, allow_empty=False)


def scopes(value: Any) -> frozenset[str] | None:
    """None (every scope) or a collection of scopes; empty means nothing is visible."""
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        got = _type_name(value)
        raise InvalidInputError("scopes", f"must be a set of scopes such as {{'dm'}}, got {got}")
    return frozenset(scope(s, "scopes") for s in value)


def source_id(value: Any) -> str | None:
    """Where a memory came from (e.g. a Discord message id); None for nowhere."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < 10**MAX_SOURCE_ID_LENGTH:
            raise InvalidInputError(
                "source_id", f"an integer must be >= 0 and have at most {MAX_SOURCE_ID_LENGTH} digits"
            )
        return str(value)
    return text("source_id", value, MAX_SOURCE_ID_LENGTH, allow_empty=False)


def callback(field: str, value: Any) -> Callable[..., Any] | None:
    if value is None:
        return None
    if not callable(value):
        raise InvalidInputError(field, f"must be callable or None, got {_type_name(value)}")
    function: Callable[..., Any] = value
    return function


def path(field: str, value: Any) -> Path | None:
    """None or a file system path given as str or os.PathLike (not bytes, not a number)."""
    if value is None:
        return None
    if isinstance(value, str) or (isinstance(value, os.PathLike) and not isinstance(value, bytes)):
        shown = os.fspath(value)
        if isinstance(shown, str) and shown and "\x00" not in shown:
            return Path(shown)
    raise InvalidInputError(
        field, f"must be a non-empty path without NUL (str or pathlib.Path), got a {_type_name(value)}"
    )


def settings(value: Any) -> Settings | None:
    if value is not None and not isinstance(value, Settings):
        raise InvalidInputError(
            "settings", f"must be a memory.Settings (see load_settings), got {_type_name(value)}"
        )
    return value


def flag(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(field, f"must be True or False, got {_type_name(value)}")
    return value


def context_limits(ctx: UserContext, limits: LimitSettings) -> UserContext:
    """A context from outside (an import) within this system's limits."""
    if len(ctx.preferences) > limits.max_preferences:
        raise InvalidInputError(
            "preferences",
            f"at most {limits.max_preferences} per user (limits.max_preferences), got {len(ctx.preferences)}",
        )
    if len(ctx.recent) > limits.recent_exchanges:
        raise InvalidInputError(
            "recent",
            f"at most {limits.recent_exchanges} exchanges (limits.recent_exchanges), got {len(ctx.recent)}",
        )
    for exchange in ctx.recent:
        text("recent message", exchange.message, limits.max_text_length)
        text("recent response", exchange.response, limits.max_text_length)
    return ctx
