"""memory-admin on a PostgreSQL memory: reads in read-only transactions, verify checks the same
invariants, and a change made beside a running bot is not undone by the bot's next write."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from memory import HashingEncoder, MemorySystem
from memory.admin import main
from tests.conftest import test_settings


def _config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "memory-bot.toml"
    config.write_text(
        f'[storage]\nbackend = "postgres"\npostgres_url = "{url}"\n[encoder]\nkind = "hashing"\n'
    )
    return config


async def _cli(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str, str]:
    """The CLI in a thread (it runs its own event loop), beside the bot's loop."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["--data-dir", "unused-data-folder", "--config", str(config), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _bot(url: str) -> MemorySystem:
    settings = test_settings(storage={"backend": "postgres", "postgres_url": url})
    return MemorySystem("unused-data-folder", settings=settings, encoder=HashingEncoder())


async def test_reads_verify_and_a_forget_beside_a_running_bot(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, postgres_url)
    async with _bot(postgres_url) as bot:
        for i in range(3):
            await bot.update_context("alice", f"I love jazz number {i}", "Noted", display_name="Alice")
        await bot.save_memory("bob", "Bob plays chess on Sundays")
        await bot.retrieve_memory("alice", "jazz")  # embedded before the admin reads

        code, out, _ = await _cli(capsys, config, "users", "--json")
        assert code == 0
        rows = {r["user_id"]: r for r in json.loads(out)}
        assert rows["alice"]["conversations"] == 3 and rows["alice"]["memories"] == 3
        assert rows["bob"]["memories"] == 1

        code, out, _ = await _cli(capsys, config, "stats", "--json")
        stats = json.loads(out)
        assert code == 0 and (stats["memories"], stats["history_rows"], stats["users"]) == (4, 3, 1)
        assert "***" not in postgres_url or "***" in stats["database"]

        code, out, _ = await _cli(capsys, config, "verify", "--json")
        report = json.loads(out)
        assert code == 0 and report["ok"] is True
        assert {c["name"]: c["status"] for c in report["checks"]}["lexical"] == "ok"

        code, out, err = await _cli(capsys, config, "forget", "alice", "--yes")
        assert code == 0, err
        # The bot still had alice cached at version 3: its next change is a conflict, rebuilt
        # on what the database holds now, so the forget is not undone.
        after = await bot.update_context("alice", "hello again", "hi")
        assert (after.version, after.conversations_count) == (1, 1)
        # Her display name went with the rest: the new exchange is under her id.
        assert [m.text for m in await bot.get_memories("alice")] == ["alice: hello again\nBot: hi"]
        assert all("jazz" not in r.memory.text for r in await bot.retrieve_memory("alice", "jazz"))

    code, out, _ = await _cli(capsys, config, "erasures", "--json")
    assert code == 0 and [e["request"] for e in json.loads(out)] == ["forget_user"]
