"""Acknowledged means durable: kill -9 at random moments, then every acknowledged change is there."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from memory import MemorySystem
from memory.recovery import SNAPSHOT_NAME
from memory.snapshot import read_snapshot
from tests.kill_helpers import run_and_kill

ROUNDS = 20


@pytest.mark.slow
async def test_kill_9_during_updates_loses_no_acknowledged_update(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    acknowledged: list[tuple[str, str]] = []
    for round_no in range(ROUNDS):
        acknowledged += run_and_kill(data_dir, round_no, "contexts", rng.randint(1, 300))
        # The snapshot the killed process left: the old file or the new, never a partial one.
        snapshot = data_dir / SNAPSHOT_NAME
        if round_no > 0 or snapshot.exists():
            users = read_snapshot(snapshot)
            assert {u["user_id"] for u in users} <= {f"user-{i}" for i in range(8)}
        async with make_system(data_dir) as ms:
            for user in {u for u, _ in acknowledged}:
                ctx = await ms.get_user_context(user)
                messages = {m.text.split("\n")[0].split(": ", 1)[1] for m in await ms.get_memories(user)}
                mine = [t for u, t in acknowledged if u == user]
                missing = [t for t in mine if t not in messages]
                assert not missing, f"seed {seed}, round {round_no}: lost {missing[:3]}"
                assert ctx.conversations_count == ctx.version == len(messages)
                assert ctx.conversations_count >= len(mine)


MEMORY_ROUNDS = 10


@pytest.mark.slow
async def test_kill_9_during_save_memory_loses_no_acknowledged_memory(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    acknowledged: list[tuple[str, str]] = []
    for round_no in range(MEMORY_ROUNDS):
        acknowledged += run_and_kill(data_dir, round_no, "memories", rng.randint(1, 300))
        async with make_system(data_dir) as ms:
            stored: dict[str, set[str]] = {}
            for user in {u for u, _ in acknowledged}:
                stored[user] = {m.text for m in await ms.get_memories(user)}
            lost = [t for u, t in acknowledged if t not in stored[u]]
            assert not lost, f"seed {seed}, round {round_no}: lost {lost[:3]}"
            for user, text in rng.sample(acknowledged, min(20, len(acknowledged))):
                found = await ms.retrieve_memory(user, text, k=10)
                assert text in [r.memory.text for r in found], f"seed {seed}: {text!r} not retrievable"
            # Once this user's embeddings are in, the index agrees with SQLite exactly.
            for user in stored:
                await ms.retrieve_memory(user, "sync")
            stats = await ms.stats()
            assert stats["pending_embeddings"] == 0
            assert stats["index_vectors"] == stats["memories"] == sum(map(len, stored.values()))
