"""A process that forgets a user and then waits to be killed: ``python -m tests.erasure_worker DIR USER``.

It prints "forgot" once ``forget_user`` has returned; the test kills it with SIGKILL at once,
inside the window before the owner's next index save.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from memory import HashingEncoder, MemorySystem, load_settings


async def forget_then_wait(data_dir: Path, user: str) -> None:
    settings = load_settings(environ={}, overrides={"encoder": {"kind": "hashing"}})
    ms = MemorySystem(data_dir, settings=settings, encoder=HashingEncoder())
    await ms.start()
    await ms.forget_user(user)
    print("forgot", flush=True)
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(forget_then_wait(Path(sys.argv[1]), sys.argv[2]))
