"""Admin commands that do not embed never import a model library (onnxruntime, torch, transformers,
sentence-transformers); the one that embeds loads onnxruntime alone.

Each command runs in a fresh interpreter (a real process) on a folder whose embeddings were
made under the real model's name; the process then reports which model libraries it loaded.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from memory import HashingEncoder, MemorySystem, load_settings
from memory.encoder import encoder_name

HEAVY = ("onnxruntime", "torch", "transformers", "sentence_transformers", "sklearn", "scipy")
RUN = """
import json, sys
from memory.admin import main
status = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads({heavy!r})))
print("LOADED=" + json.dumps([status, heavy]))
"""


class RealNamedEncoder(HashingEncoder):
    """Hashing vectors stored under the configured model's name, as the bot would store them."""

    @property
    def name(self) -> str:
        return encoder_name(load_settings(environ={}).encoder)


async def populate(data_dir: Path) -> None:
    async with MemorySystem(data_dir, settings=load_settings(environ={}), encoder=RealNamedEncoder()) as ms:
        await ms.update_context("ann", "I love hiking", "Nice!", display_name="Ann")
        await ms.update_context("ann", "my sister lives in Lyon", "Good to know")
        await ms.save_memory("bob", "I drive a red bike")


def admin(data_dir: Path, *args: str) -> tuple[int, list[str], str]:
    code = RUN.replace("{heavy!r}", repr(json.dumps(HEAVY)))
    done = subprocess.run(
        [sys.executable, "-c", code, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("LOADED=")), None)
    assert line is not None, done.stderr
    status, heavy = json.loads(line.removeprefix("LOADED="))
    return int(status), list(heavy), done.stdout + done.stderr


@pytest.fixture
async def folder(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    await populate(data_dir)
    return data_dir


async def test_reading_and_changing_commands_load_no_model(folder: Path, tmp_path: Path) -> None:
    export = tmp_path / "ann.json"
    commands: list[tuple[str, ...]] = [
        ("users",),
        ("show", "ann"),
        ("history", "ann"),
        ("stats",),
        ("verify",),
        ("export", "ann", "--output", str(export)),
        ("rollback", "ann", "1", "--yes"),
        ("forget", "ann", "--yes"),
        ("import", str(export), "--yes"),
        ("rebuild-index", "--yes"),
    ]
    for command in commands:
        status, heavy, output = admin(folder, *command)
        assert status == 0, (command, output)
        assert heavy == [], (command, heavy)
    imported: Any = json.loads(export.read_text())
    assert imported["user_id"] == "ann"
    async with MemorySystem(folder, settings=load_settings(environ={}), encoder=RealNamedEncoder()) as ms:
        assert (await ms.get_user_context("ann")).display_name == "Ann"  # imported back
        assert await ms.wait_ready()
        found = await ms.retrieve_memory("ann", "where does my sister live?")
        assert "Lyon" in found[0].memory.text and "dense" in found[0].rankers  # embedded now


@pytest.mark.slow
async def test_search_loads_the_model(folder: Path) -> None:
    status, heavy, output = admin(folder, "search", "ann", "where does my sister live?")
    assert status == 0, output
    assert heavy == ["onnxruntime"]  # the default backend: no torch, transformers or scipy
    assert "Lyon" in output
    assert re.search(r"memory-admin: loading the embedding model… ready in \d+\.\d s", output), output
