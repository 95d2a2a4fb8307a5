"""Acknowledged means durable: kill -9 at random moments, then every acknowledged change is there."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from memory import MemorySystem
from memory.recovery import SNAPSHOT_NAME
from memory.snapshot import read_snapshot
from tests.kill_helpers import kill_rounds


@pytest.mark.slow
async def test_kill_9_during_updates_loses_no_acknowledged_update(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    data_dir = tmp_path / "data"
    for kill in kill_rounds(data_dir, "contexts", rounds=20):
        # The snapshot the killed process left: the old file or the new, never a partial one.
        snapshot = data_dir / SNAPSHOT_NAME
        if kill.number > 0 or snapshot.exists():
            users = read_snapshot(snapshot)
            assert {u["user_id"] for u in users} <= {f"user-{i}" for i in range(8)}
        async with make_system(data_dir) as ms:
            for user in {u for u, _ in kill.acknowledged}:
                ctx = await ms.get_user_context(user)
                memories = await ms.get_memories(user)
                messages = {m.text.split("\n")[0].split(": ", 1)[1] for m in memories}
                mine = [t for u, t in kill.acknowledged if u == user]
                missing = [t for t in mine if t not in messages]
                assert not missing, f"{kill.label}: lost {missing[:3]}"
                assert ctx.conversations_count == ctx.version == len(messages)
                assert ctx.conversations_count >= len(mine)


@pytest.mark.slow
async def test_kill_9_during_save_memory_loses_no_acknowledged_memory(
    tmp_path: Path, make_system: Callable[..., MemorySystem]
) -> None:
    data_dir = tmp_path / "data"
    for kill in kill_rounds(data_dir, "memories", rounds=10):
        async with make_system(data_dir) as ms:
            stored = {u: {m.text for m in await ms.get_memories(u)} for u, _ in kill.acknowledged}
            lost = [t for u, t in kill.acknowledged if t not in stored[u]]
            assert not lost, f"{kill.label}: lost {lost[:3]}"
            for user, text in kill.rng.sample(kill.acknowledged, min(20, len(kill.acknowledged))):
                found = await ms.retrieve_memory(user, text, k=10)
                assert text in [r.memory.text for r in found], f"{kill.label}: {text!r} not retrievable"
            for user in stored:  # waits for each user's pending embeddings
                await ms.retrieve_memory(user, "sync")
            stats = await ms.stats()
            assert stats["pending_embeddings"] == 0
            # Memories committed just before the kill may never have been acknowledged: at least.
            assert stats["index_vectors"] == stats["memories"] >= sum(map(len, stored.values()))
