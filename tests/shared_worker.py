"""A bot process's share of the work, for the tests of several processes on one PostgreSQL memory.

Usage: python -m tests.shared_worker URL MODE NAME [ARGS]
- ``updates NAME CALLERS ROUNDS USERS``: CALLERS concurrent callers, each making ROUNDS
  ``update_context`` calls on users picked by a seeded generator; prints "ack <user>" after each
  returned, then "done".
- ``stream NAME``: updates forever from 20 callers, printing "ack <user> <text>" after each
  acknowledged update and "err <reason>" for one the server refused (it is retried as new).
- ``remember NAME USER TEXT``: saves one memory, waits until it is embedded, prints "embedded",
  then waits for a line on stdin before closing (so its embedder is not the one under test).
"""

from __future__ import annotations

import asyncio
import random
import sys
from typing import Any

from memory import HashingEncoder, MemorySystem, StorageError, load_settings


def _system(url: str) -> MemorySystem:
    settings = load_settings(
        environ={},
        overrides={
            "storage": {"backend": "postgres", "postgres_url": url},
            "encoder": {"kind": "hashing", "ready_wait_ms": 600_000.0},
        },
    )
    return MemorySystem("unused-data-folder", settings=settings, encoder=HashingEncoder())


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def updates(ms: MemorySystem, name: str, callers: int, rounds: int, users: int) -> None:
    async def caller(number: int) -> None:
        rng = random.Random(f"{name}-{number}")
        for step in range(rounds):
            uid = f"user-{rng.randrange(users)}"
            await ms.update_context(uid, f"{name} caller {number} step {step}", "ok")
            _say(f"ack {uid}")

    await asyncio.gather(*(caller(n) for n in range(callers)))
    _say("done")


async def stream(ms: MemorySystem, name: str) -> None:
    async def caller(number: int) -> None:
        step = 0
        while True:
            uid = f"user-{number % 10}"
            text = f"{name} caller {number} step {step}"
            step += 1
            try:
                await ms.update_context(uid, text, "ok")
            except StorageError as exc:  # the server went away: this one is not acknowledged
                _say(f"err {type(exc).__name__}")
                await asyncio.sleep(0.05)  # retry pacing while the server restarts, not a sync
                continue
            _say(f"ack {uid} {text}")

    await asyncio.gather(*(caller(n) for n in range(20)))


async def remember(ms: MemorySystem, user: str, text: str) -> None:
    await ms.save_memory(user, text)
    results = await ms.retrieve_memory(user, text)  # waits for the user's own embedding
    assert results and "not-embedded" not in results[0].rankers, results
    _say("embedded")
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def main(args: list[str]) -> None:
    url, mode, name, *rest = args
    async with _system(url) as ms:
        _say("started")
        work: dict[str, Any] = {
            "updates": lambda: updates(ms, name, int(rest[0]), int(rest[1]), int(rest[2])),
            "stream": lambda: stream(ms, name),
            "remember": lambda: remember(ms, rest[0], rest[1]),
        }
        await work[mode]()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
