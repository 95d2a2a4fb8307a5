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


@pytest.fixture
def make_system(tmp_path: Path) -> Callable[..., MemorySystem]:
    def make(data_dir: Path | None = None, **sections: dict[str, Any]) -> MemorySystem:
        return MemorySystem(
            data_dir or tmp_path / "data",
            settings=test_settings(**sections),
            encoder=HashingEncoder(),
        )

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
