"""A database URL shown or logged never carries its password."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

MASK = "***"
_USER_INFO_PASSWORD = re.compile(r"(://[^/@:?#]*):[^/@?#]*@")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")


def url_passwords(url: str) -> list[str]:
    """The password in ``url`` (user info or ``password=``), as written and decoded: the
    secrets a log must never show. Empty when there is none."""
    found: list[str] = []
    try:
        parts = urlsplit(url)
        if parts.password:
            found.append(parts.password)
        found += [v for k, v in parse_qsl(parts.query) if k.lower() == "password" and v]
    except ValueError:
        return []
    found += [unquote(p) for p in found]
    return sorted({p for p in found if p}, key=len, reverse=True)


def masked_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: for messages, logs and stats."""
    return _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", _USER_INFO_PASSWORD.sub(rf"\g<1>:{MASK}@", url))
