"""Choosing the backend: settings and environment, a clear error without a URL, and a database
password that never reaches a log line, a message or the printed configuration."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

import pytest

from bot.config_view import render_config
from memory import ConfigError, HashingEncoder, MemorySystem, load_settings
from memory.storage.urls import masked_url, url_passwords
from tests.conftest import test_settings

SECRET = "hunter2-very-secret"


def _with_password(url: str) -> str:
    """The test server's URL with a user and password (its local connections are trusted, so
    the password is accepted and never checked: it only has to be kept out of the logs)."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    netloc = f"{user}:{SECRET}@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def test_the_backend_comes_from_the_environment_and_the_password_is_masked_when_printed() -> None:
    env = {
        "MEMORY_BOT_STORAGE_BACKEND": "postgres",
        "MEMORY_BOT_STORAGE_POSTGRES_URL": f"postgresql://bot:{SECRET}@db.example/memory",
    }
    settings = load_settings(environ=env)
    assert (settings.storage.backend, settings.storage.postgres_url.endswith("/memory")) == ("postgres", True)
    printed = render_config(settings, env)
    assert SECRET not in printed and "db.example/memory" in printed
    with pytest.raises(ConfigError, match="must be one of sqlite, postgres"):
        load_settings(environ={"MEMORY_BOT_STORAGE_BACKEND": "mysql"})


def test_passwords_are_found_and_masked_in_every_place_a_url_holds_them() -> None:
    assert masked_url(f"postgresql://bot:{SECRET}@h:5432/m") == "postgresql://bot:***@h:5432/m"
    assert masked_url(f"postgresql:///m?host=/s&password={SECRET}") == "postgresql:///m?host=/s&password=***"
    assert url_passwords("postgresql://bot:a%40b@h/m") == ["a%40b", "a@b"]
    assert url_passwords("postgresql:///m?host=/s") == []


async def test_postgres_without_a_url_says_how_to_get_one() -> None:
    ms = MemorySystem(
        "unused", settings=test_settings(storage={"backend": "postgres"}), encoder=HashingEncoder()
    )
    with pytest.raises(ConfigError, match="make postgres"):
        await ms.start()


async def test_a_password_in_the_url_is_never_logged(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = _with_password(postgres_url)
    settings = test_settings(storage={"backend": "postgres", "postgres_url": url})
    with caplog.at_level(logging.DEBUG):
        async with MemorySystem("unused", settings=settings, encoder=HashingEncoder()) as ms:
            await ms.update_context("alice", "hello", "hi")
            stats = await ms.stats()
            assert ms.report is not None and SECRET not in str(ms.report.to_dict())
    assert SECRET not in caplog.text and "memory system started" in caplog.text
    assert SECRET not in str(stats)
