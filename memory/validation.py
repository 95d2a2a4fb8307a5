"""Checks for caller input; each rejection names the field and the rule, and changes nothing."""

from __future__ import annotations

import re
from typing import Any

from memory.errors import InvalidInputError

MAX_USER_ID_LENGTH = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def user_id(value: Any) -> str:
    """A user id as a string; Discord's integer ids are converted."""
    if isinstance(value, bool):
        raise InvalidInputError("user_id", "must be a string or an integer, got a bool")
    if isinstance(value, int):
        if value < 0:
            raise InvalidInputError("user_id", "an integer id must not be negative")
        return str(value)
    if not isinstance(value, str):
        raise InvalidInputError("user_id", f"must be a string or an integer, got {type(value).__name__}")
    if not value:
        raise InvalidInputError("user_id", "must not be empty")
    if len(value) > MAX_USER_ID_LENGTH:
        raise InvalidInputError(
            "user_id", f"must be at most {MAX_USER_ID_LENGTH} characters, got {len(value)}"
        )
    if _CONTROL.search(value):
        raise InvalidInputError("user_id", "must not contain control characters")
    if not is_utf8(value):
        raise InvalidInputError("user_id", "must be valid Unicode (it holds a lone surrogate)")
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
        raise InvalidInputError(field, f"must be a string, got {type(value).__name__}")
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


def positive_int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(field, f"must be an integer, got {type(value).__name__}")
    if value < 1:
        raise InvalidInputError(field, f"must be at least 1, got {value}")
    return value
