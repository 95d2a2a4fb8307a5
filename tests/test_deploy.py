"""deploy/: the Dockerfile and the systemd unit say what the README promises, and validate."""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot.__main__ import EXIT_CONFIG
from memory import load_settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
UNIT = ROOT / "deploy" / "memory-bot.service"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
    assert not pending, "a continuation line runs off the end"
    return out


def env_of(steps: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in steps:
        if keyword == "ENV":
            for pair in args.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_dockerfile_runs_as_a_non_root_user_with_a_data_volume_and_a_healthcheck() -> None:
    steps = instructions(DOCKERFILE)
    keywords = [k for k, _ in steps]
    assert keywords[0] == "FROM"
    users = [args for k, args in steps if k == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    [volume] = [json.loads(args) for k, args in steps if k == "VOLUME"]
    env = env_of(steps)
    assert env["MEMORY_BOT_STORAGE_DATA_DIR"] in volume
    assert env["MEMORY_BOT_BOT_MODE"] == "discord"
    [healthcheck] = [args for k, args in steps if k == "HEALTHCHECK"]
    assert f"127.0.0.1:{env['MEMORY_BOT_HEALTH_PORT']}/healthz" in healthcheck
    [cmd] = [json.loads(args) for k, args in steps if k == "CMD"]
    assert cmd == ["python", "-m", "bot"]
    for keyword, args in steps:
        if keyword == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    # every MEMORY_BOT_ variable the image sets is a real setting with a valid value
    settings = load_settings(environ={k: v for k, v in env.items() if k.startswith("MEMORY_BOT_")})
    assert settings.health.enabled == "on" and settings.storage.data_dir in volume


def test_healthcheck_command_is_valid_python() -> None:
    [healthcheck] = [args for k, args in instructions(DOCKERFILE) if k == "HEALTHCHECK"]
    command = json.loads(healthcheck.split("CMD ", 1)[1])
    assert command[:2] == ["python", "-c"]
    compile(command[2], "HEALTHCHECK", "exec")


def test_systemd_unit_restarts_on_failure_but_not_on_a_configuration_error() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == str(EXIT_CONFIG)
    assert service["User"] not in ("root", "0")
    assert service["ExecStart"].endswith("python -m bot")
    assert service["KillSignal"] == "SIGTERM"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this interpreter.
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/opt/memory-bot/.venv/bin/python", sys.executable))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
