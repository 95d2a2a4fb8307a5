"""What a failure to reach the server means for the person running the bot; never the password
(``urls.py`` masks it)."""

from __future__ import annotations

import asyncpg

from memory.errors import StorageError
from memory.storage.urls import masked_url, url_passwords


def connection_error(url: str, exc: BaseException) -> StorageError:
    """What went wrong reaching the server, and what to do."""
    detail = str(exc) or type(exc).__name__
    for password in url_passwords(url):
        detail = detail.replace(password, "***")
    if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        advice = "check the user and password in storage.postgres_url"
    elif isinstance(exc, asyncpg.InvalidCatalogNameError):
        advice = "create the database (createdb) or name an existing one in storage.postgres_url"
    elif isinstance(exc, OSError | TimeoutError):
        advice = "is the server running? start a local one with `make postgres`, or fix storage.postgres_url"
    else:
        advice = "check storage.postgres_url and the server's log"
    return StorageError(f"cannot use PostgreSQL at {masked_url(url)}: {detail}; {advice}")
