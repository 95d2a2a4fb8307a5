"""The locks install what pyproject.toml declares, and the checks that `make test` runs catch drift."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from requirements.lockcheck import Lock, declared, env_problems, parse_lock, pyproject_problems, read_lock

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements" / "lock.txt"
ONNX_LOCK = ROOT / "requirements" / "lock-onnx.txt"
DEV_TOOLS = (
    "ruff",
    "mypy",
    "pytest",
    "pytest-asyncio",
    "pytest-timeout",
    "hypothesis",
    "dpytest",
    "types-aiofiles",
)


def run_check(pyproject: Path, lock: Path = LOCK) -> subprocess.CompletedProcess[str]:
    """The pyproject check as `make check` runs it, in its own process."""
    script = ROOT / "requirements" / "lockcheck.py"
    command = [sys.executable, str(script), "pyproject", str(lock), "--pyproject", str(pyproject)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def edited_pyproject(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of pyproject.toml with one dependency line changed."""
    text = PYPROJECT.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path = tmp_path / "pyproject.toml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


@pytest.mark.parametrize("lock_path", [LOCK, ONNX_LOCK], ids=["default", "onnx"])
def test_each_lock_pins_every_declared_dependency_within_its_bounds(lock_path: Path) -> None:
    lock = read_lock(lock_path)
    with PYPROJECT.open("rb") as file:
        requirements = declared(tomllib.load(file), lock.extras)
    assert "dev" in lock.extras
    assert len(requirements) > 20
    assert pyproject_problems(requirements, lock) == []
    assert run_check(PYPROJECT, lock_path).returncode == 0


def test_the_default_lock_pins_the_dev_tools_and_the_cpu_torch_exactly() -> None:
    lock = read_lock(LOCK)
    assert all(tool in lock.pins for tool in DEV_TOOLS), sorted(set(DEV_TOOLS) - set(lock.pins))
    assert lock.pins["torch"] == "2.13.0+cpu"
    assert [name for name in lock.pins if name.startswith(("nvidia-", "triton"))] == []
    assert {"pip", "setuptools", "wheel", "aiohttp", "prometheus-client"} <= set(lock.pins)
    assert lock.python == f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.mark.parametrize("lock_path", [LOCK, ONNX_LOCK], ids=["default", "onnx"])
def test_every_pin_carries_a_hash(lock_path: Path) -> None:
    text = lock_path.read_text(encoding="utf-8")
    blocks = re.split(r"\n(?=[a-z0-9])", text)
    pinned = [block for block in blocks if "==" in block.split("\n", 1)[0]]
    assert len(pinned) == len(parse_lock(text).pins)
    assert [block.split()[0] for block in pinned if "--hash=sha256:" not in block] == []


def test_the_onnx_lock_keeps_its_older_stack_out_of_the_default_one() -> None:
    default, onnx = read_lock(LOCK), read_lock(ONNX_LOCK)
    assert onnx.pins["transformers"] == "4.57.6"
    assert "optimum" not in default.pins
    assert default.pins["transformers"] != onnx.pins["transformers"]


def test_a_dependency_added_to_pyproject_only_fails_the_check(tmp_path: Path) -> None:
    pyproject = edited_pyproject(tmp_path, '"orjson>=3.9",', '"orjson>=3.9",\n    "left-pad>=1.0",')
    result = run_check(pyproject)
    assert result.returncode == 1
    assert "left-pad>=1.0 is declared in pyproject.toml but not in the lock" in result.stderr
    assert "make lock" in result.stderr


def test_a_lower_bound_above_the_locked_version_fails_the_check(tmp_path: Path) -> None:
    pyproject = edited_pyproject(tmp_path, '"numpy>=1.26",', '"numpy>=99",')
    result = run_check(pyproject)
    assert result.returncode == 1
    pin = f"numpy=={read_lock(LOCK).pins['numpy']}"
    assert f"numpy>=99 is declared in pyproject.toml but the lock pins {pin}" in result.stderr


def test_a_dependency_dropped_from_pyproject_but_still_locked_fails_the_check(tmp_path: Path) -> None:
    pyproject = edited_pyproject(tmp_path, '    "orjson>=3.9",\n', "")
    result = run_check(pyproject)
    assert result.returncode == 1
    assert "orjson==" in result.stderr
    assert "which no longer declares it" in result.stderr


def test_an_environment_off_the_lock_is_named_package_by_package() -> None:
    lock = read_lock(LOCK)
    present = dict(lock.pins)
    present["transformers"] = "4.57.6"
    present["optimum"] = "2.1.0"
    del present["ruff"]
    present["memory-bot"] = "0.1.0"
    problems = env_problems(lock, present, "3.12")
    assert problems == [
        f"the lock was made with Python {lock.python}, this is Python 3.12",
        f"ruff=={lock.pins['ruff']} is locked but not installed",
        f"transformers=={lock.pins['transformers']} is locked but 4.57.6 is installed",
        "optimum==2.1.0 is installed but not in the lock",
    ]
    assert env_problems(lock, {**lock.pins, "memory-bot": "0.1.0"}, lock.python or "") == []


def test_the_lock_parser_reads_pins_reasons_python_and_extras() -> None:
    text = (
        "#\n# This file is autogenerated by pip-compile with Python 3.11\n# by the following command:\n#\n"
        "#    pip-compile --extra=dev --output-file=requirements/lock.txt pyproject.toml\n#\n"
        "Discord.py==2.7.1 \\\n    --hash=sha256:ab\n    # via memory-bot (pyproject.toml)\n"
        "yarl==1.25.1 \\\n    --hash=sha256:cd\n"
        "    # via\n    #   aiohttp\n    #   memory-bot (pyproject.toml)\n"
    )
    assert parse_lock(text) == Lock(
        pins={"discord-py": "2.7.1", "yarl": "1.25.1"},
        via={
            "discord-py": frozenset({"memory-bot (pyproject.toml)"}),
            "yarl": frozenset({"aiohttp", "memory-bot (pyproject.toml)"}),
        },
        python="3.11",
        extras=frozenset({"dev"}),
    )


def test_the_env_check_stops_on_a_package_at_another_version_than_locked(tmp_path: Path) -> None:
    have = read_lock(LOCK).pins["numpy"]
    import numpy

    assert numpy.__version__ == have, "this venv is not the lock's: `rm -r .venv` and run make again"
    text = LOCK.read_text(encoding="utf-8").replace(f"\nnumpy=={have} ", "\nnumpy==1.26.0 ")
    lock = tmp_path / "lock.txt"
    lock.write_text(text, encoding="utf-8")
    script = ROOT / "requirements" / "lockcheck.py"
    command = [sys.executable, str(script), "env", str(lock)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert f"numpy==1.26.0 is locked but {have} is installed" in result.stderr
    assert "and run make again: it rebuilds the venv from the lock" in result.stderr
