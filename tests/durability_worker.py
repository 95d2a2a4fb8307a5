"""Child process for the kill -9 tests: writes forever, printing each acknowledged change.

Usage: python -m tests.durability_worker DATA_DIR ROUND MODE   (MODE: contexts | memories)
A line "ack <user> <n> <text>" is printed (and flushed) only after the call returned.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from memory import MemorySystem, load_settings

CONCURRENCY = 16


async def main(data_dir: Path, round_no: int, mode: str) -> None:
    settings = load_settings(overrides={"storage": {"save_interval": 0.02}})
    async with MemorySystem(data_dir, settings=settings) as ms:
        print("started", flush=True)

        async def writer(worker: int) -> None:
            n = 0
            while True:
                uid = f"user-{worker % 8}"
                text = f"round {round_no} worker {worker} item {n}"
                if mode == "contexts":
                    await ms.update_context(uid, text, "ok")
                else:
                    await ms.save_memory(uid, text)
                sys.stdout.write(f"ack {uid} {n} {text}\n")
                sys.stdout.flush()
                n += 1

        await asyncio.gather(*(writer(w) for w in range(CONCURRENCY)))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
