"""The users an owner blocked: the bot neither answers nor remembers them, across restarts.

Kept in ``blocked-users.json`` in the data folder (written atomically: temp file, fsync,
rename), beside the memory it protects, so a backup of the folder carries it too.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from memory import StorageError, atomic_write

FILENAME = "blocked-users.json"


class BlockList:
    """A set of user ids, loaded once and saved after every change."""

    def __init__(self) -> None:
        self.path: Path | None = None  # set by load(), once the data folder is known
        self._ids: set[str] = set()

    def __contains__(self, user_id: object) -> bool:
        return str(user_id) in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    async def load(self, path: Path) -> None:
        self.path = path
        try:
            raw = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            self._ids = set()
            return
        except OSError as exc:
            raise StorageError(
                f"cannot read the block list {self.path}: {exc.strerror or exc}", self.path
            ) from exc
        try:
            ids = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise StorageError(
                f"the block list {self.path} is not valid JSON ({exc}); fix it or move it aside", self.path
            ) from exc
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise StorageError(
                f"the block list {self.path} must be a JSON list of user id strings", self.path
            )
        self._ids = set(ids)

    async def block(self, user_id: str | int) -> bool:
        """True when the user was not blocked before."""
        return await self._change(str(user_id), add=True)

    async def unblock(self, user_id: str | int) -> bool:
        """True when the user was blocked before."""
        return await self._change(str(user_id), add=False)

    async def _change(self, user_id: str, *, add: bool) -> bool:
        if (user_id in self._ids) == add:
            return False
        ids = self._ids | {user_id} if add else self._ids - {user_id}
        if self.path is None:
            raise StorageError("the block list is not loaded yet; start the bot first")
        try:
            await asyncio.to_thread(atomic_write, self.path, orjson.dumps(sorted(ids)))
        except OSError as exc:
            raise StorageError(
                f"cannot write the block list {self.path}: {exc.strerror or exc}", self.path
            ) from exc
        self._ids = ids
        return True
