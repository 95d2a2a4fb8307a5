"""Sharded bots: an AutoShardedBot per process when configured, shard groups dealt evenly,
one PostgreSQL memory for all of them."""

from __future__ import annotations

import discord
import pytest

from bot.app import MemoryBot, ShardedMemoryBot, make_memory_bot, shard_options
from bot.sharded import main, process_environments, shard_groups
from memory import ConfigError, HashingEncoder, MemorySystem
from tests.conftest import test_settings


def _memory() -> MemorySystem:
    return MemorySystem("unused", settings=test_settings(), encoder=HashingEncoder())


def test_shard_settings_choose_the_bot_class() -> None:
    plain = make_memory_bot(_memory(), test_settings())
    assert type(plain) is MemoryBot
    sharded = make_memory_bot(_memory(), test_settings(bot={"shard_count": 4, "shard_ids": ["2", "0"]}))
    assert isinstance(sharded, ShardedMemoryBot) and isinstance(sharded, discord.AutoShardedClient)
    assert (sharded.shard_count, sharded.shard_ids) == (4, [0, 2])
    every = make_memory_bot(_memory(), test_settings(bot={"shard_count": 2}))
    assert isinstance(every, ShardedMemoryBot) and every.shard_ids is None  # all shards here


@pytest.mark.parametrize(
    ("bot", "problem"),
    [
        ({"shard_count": 2, "shard_ids": ["2"]}, "'2' is not a shard id"),
        ({"shard_count": 2, "shard_ids": ["x"]}, "'x' is not a shard id"),
        ({"shard_ids": ["0"]}, "needs bot.shard_count"),
    ],
)
def test_bad_shard_settings_are_one_clear_error(bot: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        shard_options(test_settings(bot=bot).bot)


def test_shard_groups_deal_every_shard_once_with_dms_in_the_first() -> None:
    assert shard_groups(2, 2) == [[0], [1]]
    assert shard_groups(2, 5) == [[0, 2, 4], [1, 3]]
    groups = shard_groups(3, 10)
    assert sorted(s for g in groups for s in g) == list(range(10)) and 0 in groups[0]
    with pytest.raises(ValueError, match="at least one shard per process"):
        shard_groups(3, 2)


def test_each_process_gets_the_shared_memory_its_shards_and_its_port() -> None:
    envs = process_environments({"DISCORD_TOKEN": "t"}, "postgresql:///m?host=/s", [[0, 2], [1]], 8100)
    assert [e["MEMORY_BOT_BOT_SHARD_IDS"] for e in envs] == ["0,2", "1"]
    assert {e["MEMORY_BOT_BOT_SHARD_COUNT"] for e in envs} == {"3"}
    assert {e["MEMORY_BOT_STORAGE_BACKEND"] for e in envs} == {"postgres"}
    assert {e["MEMORY_BOT_STORAGE_POSTGRES_URL"] for e in envs} == {"postgresql:///m?host=/s"}
    assert [e["MEMORY_BOT_HEALTH_PORT"] for e in envs] == ["8100", "8101"]
    for env in envs:  # every setting the child reads is a valid one
        test_settings(
            storage={"backend": env["MEMORY_BOT_STORAGE_BACKEND"]},
            bot={
                "shard_count": int(env["MEMORY_BOT_BOT_SHARD_COUNT"]),
                "shard_ids": env["MEMORY_BOT_BOT_SHARD_IDS"],
            },
        )


def test_sharded_needs_a_token_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--processes", "2"], environ={}) == 2
    assert "DISCORD_TOKEN" in capsys.readouterr().err
    assert main(["--processes", "3", "--shards", "2"], environ={"DISCORD_TOKEN": "t"}) == 2
    assert "at least one shard per process" in capsys.readouterr().err
