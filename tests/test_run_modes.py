"""``python -m bot`` as a service manager runs it: real processes, their exit codes and logs."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from bot.__main__ import EXIT_CONFIG, choose_mode
from memory import ConfigError
from tests.test_console import ROOT, console_env

TOKEN = "MTIz.fake-token.SECRET-0123456789"
API_KEY = "sk-live-SECRET-abcdef"


def run_bot(
    *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**console_env(), **(env or {})},
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("mode", "token", "interactive", "expected"),
    [
        ("auto", "t", False, "discord"),
        ("auto", "", True, "console"),
        ("console", "t", False, "console"),
        ("discord", "t", False, "discord"),
    ],
)
def test_choose_mode(mode: str, token: str, interactive: bool, expected: str) -> None:
    assert choose_mode(mode, token, interactive) == expected


def test_no_console_without_a_terminal_unless_asked() -> None:
    with pytest.raises(ConfigError, match=r"not a terminal.*--console"):
        choose_mode("auto", "", False)


def test_discord_mode_without_a_token_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    result = run_bot("--mode", "discord", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == EXIT_CONFIG
    [line] = result.stderr.strip().splitlines()
    assert line.startswith('memory-bot: bot.mode is "discord" but DISCORD_TOKEN is not set')
    assert result.stdout == ""
    assert not (tmp_path / "data").exists()  # nothing was started


def test_auto_mode_under_a_service_manager_fails_instead_of_chatting_on_stdin(tmp_path: Path) -> None:
    result = run_bot("--data-dir", str(tmp_path), env={"MEMORY_BOT_BOT_MODE": "auto"})
    assert result.returncode == EXIT_CONFIG
    assert "DISCORD_TOKEN is not set and standard input is not a terminal" in result.stderr
    assert "Traceback" not in result.stderr


def test_print_config_shows_the_effective_settings_with_secrets_masked() -> None:
    env = {
        "DISCORD_TOKEN": TOKEN,
        "MEMORY_BOT_LLM_API_KEY": API_KEY,
        "MEMORY_BOT_STORAGE_SAVE_INTERVAL": "5",
        "MEMORY_BOT_BOT_PROXY": "http://ops:hunter2@proxy.local:3128",
        "MEMORY_BOT_BOT_CHANNELS": "general,memory",
    }
    result = run_bot("--print-config", env=env)
    assert result.returncode == 0, result.stderr
    for secret in (TOKEN, API_KEY, "hunter2"):
        assert secret not in result.stdout
    assert "# secret DISCORD_TOKEN: set (hidden)" in result.stdout
    assert "# secret OPENAI_API_KEY: not set" in result.stdout
    config = tomllib.loads(result.stdout)
    assert config["storage"]["save_interval"] == 5.0
    assert config["storage"]["synchronous"] == "FULL"
    assert config["bot"]["channels"] == ["general", "memory"]
    assert config["bot"]["proxy"] == "http://[redacted]@proxy.local:3128"
    assert config["encoder"]["kind"] == "hashing"
    assert set(config) == {"storage", "limits", "encoder", "retrieval", "bot", "health", "logging"}


def test_unreachable_discord_is_retried_with_one_line_each_and_ctrl_c_exits_quietly(tmp_path: Path) -> None:
    log_file = tmp_path / "bot.log"
    health_port = free_port()
    env = {
        "DISCORD_TOKEN": TOKEN,
        "MEMORY_BOT_LLM_API_KEY": API_KEY,
        "MEMORY_BOT_BOT_PROXY": f"http://127.0.0.1:{free_port()}",  # nothing listens: unreachable
        "MEMORY_BOT_HEALTH_PORT": str(health_port),
        "MEMORY_BOT_LOGGING_FILE": str(log_file),
        "MEMORY_BOT_LOGGING_FORMAT": "json",
        "MEMORY_BOT_LOGGING_LEVEL": "INFO",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "--data-dir", str(tmp_path / "data")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**console_env(), **env},
        cwd=ROOT,
    )
    try:
        attempts = wait_for_lines(log_file, "cannot reach Discord", 2, proc)
        with pytest.raises(urllib.error.HTTPError) as unhealthy:
            urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=10)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert unhealthy.value.code == 503
    reason = unhealthy.value.read().decode()
    assert reason.startswith("Discord gateway: cannot reach Discord (ClientProxyConnectionError"), reason
    assert proc.returncode == 0, err
    assert (out, err) == ("", "")  # everything went to the log file
    text = log_file.read_text()
    assert TOKEN not in text and API_KEY not in text
    entries = [orjson.loads(line) for line in text.splitlines()]
    assert "Traceback" not in text
    assert attempts[0]["level"] == "WARNING"
    assert attempts[0]["message"].startswith("cannot reach Discord (ClientProxyConnectionError")
    assert attempts[0]["message"].endswith("retrying in 1 s")
    assert attempts[1]["message"].endswith("retrying in 2 s")  # the delay doubles
    assert entries[-1]["message"] == "signal received: shutting down"


def wait_for_lines(path: Path, text: str, count: int, proc: subprocess.Popen[str]) -> list[dict[str, str]]:
    """The first ``count`` JSON log entries containing ``text``, once the process wrote them."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if path.exists():
            found = [e for e in map(orjson.loads, path.read_text().splitlines()) if text in e["message"]]
            if len(found) >= count:
                return found
        time.sleep(0.1)
    raise AssertionError(f"{count} log lines with {text!r} did not appear in {path}")
