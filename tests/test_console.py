"""``python -m bot --console``: a piped conversation, a restart, and a clean SIGTERM."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bot.console import ConsoleUser, run_console
from bot.responder import TemplateResponder
from memory import HashingEncoder, MemorySystem
from tests.bot_fixtures import bot_settings

ROOT = Path(__file__).resolve().parent.parent


def console_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MEMORY_BOT_") and k not in ("DISCORD_TOKEN", "OPENAI_API_KEY")
    }
    env.update(MEMORY_BOT_ENCODER_KIND="hashing", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return env


def chat(data_dir: Path, *lines: str, user: str = "42:Al", extra_env: dict[str, str] | None = None) -> str:
    """Pipe ``lines`` into a console run as ``user``; its stdout (it must exit 0)."""
    result = subprocess.run(
        [sys.executable, "-m", "bot", "--console", "--data-dir", str(data_dir), "--user", user],
        input="".join(f"{line}\n" for line in lines),
        capture_output=True,
        text=True,
        env={**console_env(), **(extra_env or {})},
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_console_remembers_a_person_across_a_restart(tmp_path: Path) -> None:
    first = chat(tmp_path, "hi, call me Sam", "my favourite food is pizza")
    assert "I'll call you Sam" in first
    assert "your favourite food is pizza" in first
    assert first.rstrip().endswith("bye! (memory saved)")
    second = chat(tmp_path, "hello again", "what is my favourite food?", "/profile")
    assert "- name: Sam" in second  # the name survived (no greeting: away only seconds)
    assert "You told me your favourite food is pizza." in second
    assert "Conversations: 4" in second
    assert "- name: Sam" in second


def test_sigterm_ends_the_console_cleanly_and_keeps_what_was_said(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "--console", "--data-dir", str(tmp_path), "--user", "7:Kim"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=console_env(),
        cwd=ROOT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write("I love jazz\n")
        proc.stdin.flush()
        for line in proc.stdout:  # wait for the reply: the exchange is stored once it is sent
            if line.startswith("bot>"):
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "bye! (memory saved)" in out
    assert "- likes: jazz" in chat(tmp_path, "/profile", user="7:Kim")


async def test_console_commands_mirror_the_discord_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    memory = MemorySystem(tmp_path / "data", settings=bot_settings(), encoder=HashingEncoder())
    script = "\n".join(
        [
            "/remember the spare key is under the blue pot",
            "/recall spare key",
            "/forget 999",
            "/export mine.json",
            "/nonsense",
            "/forget 1",
            "/recall spare key",
            "/quit",
            "this line is never read",
        ]
    )
    out = io.StringIO()
    await run_console(
        memory,
        TemplateResponder(),
        ConsoleUser.parse("9:Robin"),
        stdin=io.StringIO(script),
        stdout=out,
    )
    text = out.getvalue()
    assert "memory #1" in text
    assert "#1 (note" in text and "blue pot" in text
    assert "couldn't find memory #999 among yours" in text
    assert (tmp_path / "mine.json").is_file()
    assert "I don't know /nonsense" in text
    assert "memory #1 is gone" in text
    assert text.count("blue pot") == 2  # the remembered line echo and the first recall only
    assert "never read" not in text


def test_an_llm_key_in_the_environment_is_not_taken_for_a_setting(tmp_path: Path) -> None:
    out = chat(tmp_path, "hello", extra_env={"MEMORY_BOT_LLM_API_KEY": "sk-never-shown"})
    assert "Hi Al, nice to meet you!" in out
    assert "sk-never-shown" not in out


def test_console_user_parsing() -> None:
    assert ConsoleUser.parse("42:Sam Smith") == ConsoleUser("42", "Sam Smith")
    assert ConsoleUser.parse("alex") == ConsoleUser("alex", "alex")
    with pytest.raises(ValueError, match="--user"):
        ConsoleUser.parse(":Sam")
