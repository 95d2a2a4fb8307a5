"""Shared fixtures: real data folders in tmp_path, the fast deterministic test encoder."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from memory import HashingEncoder, MemorySystem, Settings, load_settings

# The admin CLI's fixtures (folder, config, cli) live beside its helpers; PostgreSQL's in theirs.
pytest_plugins = ["tests.admin_fixtures", "tests.postgres_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def test_settings(**sections: dict[str, Any]) -> Settings:
    """Defaults plus the hashing encoder and whatever a test overrides."""
    # Tests that use the real model wait for it (the lexical fallback has its own tests).
    overrides: dict[str, dict[str, Any]] = {"encoder": {"kind": "hashing", "ready_wait_ms": 600_000.0}}
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_settings(environ={}, overrides=overrides)


test_settings.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture
def settings() -> Settings:
    return test_settings()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_backends: run the module's tests once on SQLite and once on PostgreSQL"
    )
    config.addinivalue_line(
        "markers", "sqlite_only(why): in a both_backends module, a test of SQLite's own files"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``both_backends`` that use ``backend`` (``make_system`` and ``ms`` do) run
    twice: one behaviour suite for the storage protocol's two implementations."""
    marked = metafunc.definition.get_closest_marker
    if "backend" in metafunc.fixturenames and marked("both_backends") and not marked("sqlite_only"):
        metafunc.parametrize("backend", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The storage backend of this test's systems (SQLite unless parametrised)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def make_system(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Callable[..., MemorySystem]:
    """Systems on real storage. On PostgreSQL, each data folder a test names gets its own
    database, so two folders are two memories on both backends."""
    databases: dict[Path, str] = {}

    def make(data_dir: Path | None = None, **sections: dict[str, Any]) -> MemorySystem:
        folder = data_dir or tmp_path / "data"
        if backend == "postgres":
            if folder not in databases:
                databases[folder] = request.getfixturevalue("make_postgres_database")()
            storage = {"backend": "postgres", "postgres_url": databases[folder]}
            sections = {**sections, "storage": {**storage, **sections.get("storage", {})}}
        return MemorySystem(folder, settings=test_settings(**sections), encoder=HashingEncoder())

    return make


@pytest.fixture
async def ms(make_system: Callable[..., MemorySystem]) -> AsyncIterator[MemorySystem]:
    system = make_system()
    await system.start()
    yield system
    await system.close()


def subprocess_env() -> dict[str, str]:
    """The environment for child processes: the fast encoder, offline, this checkout importable."""
    env = dict(os.environ)
    env["MEMORY_BOT_ENCODER_KIND"] = "hashing"
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    return env
