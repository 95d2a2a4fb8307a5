"""The public surface: memory exports only what __all__ names, and never imports discord."""

from __future__ import annotations

import subprocess

import memory
from tests.conftest import PYTHON, ROOT, subprocess_env


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in vars(memory) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(memory, name)).__name__ == "module"}
    assert set(memory.__all__) == public - modules
    assert all(getattr(memory, name) is not None for name in memory.__all__)


def test_the_library_never_imports_discord_or_the_bot() -> None:
    check = (
        "import sys, memory, memory.admin; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('discord', 'bot')))"
    )
    out = subprocess.run(
        [PYTHON, "-c", check], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
