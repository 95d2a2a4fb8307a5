"""Secrets never reach the log: error bodies of remote services are redacted before logging.

A server that echoes the request (some proxies do, on errors) would otherwise put the API key
into the log file of every failure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "[redacted]"
_BEARER = re.compile(r"(?i)\b(bearer|token|basic)\s+[A-Za-z0-9._~+/=-]{4,}")
_KEY_VALUE = re.compile(
    r"""(?i)(["']?(?:api[_-]?key|access[_-]?token|token|authorization|password|secret)["']?\s*[:=]\s*)(["']?)[^\s"',}]+"""
)
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s:]+:[^/@\s]+@")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with each known secret, any bearer token and URL credentials masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{MASK}@", text)
