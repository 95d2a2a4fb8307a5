"""The one exception hierarchy of memory-bot.

Every message says what was wrong and what to do about it::

    MemoryBotError
    ├── ConfigError            a setting has a bad value (names the setting and the value)
    ├── InvalidInputError      a caller passed bad input (names the field and the rule)
    ├── UserNotFoundError      the user id is unknown
    ├── MemoryNotFoundError    the memory id is unknown for that user
    ├── VersionNotFoundError   the history has no such version
    ├── LockOrderError         a task took locks against the hierarchy (a bug, raised at once)
    ├── SystemClosedError      the MemorySystem is not started, or already closed
    ├── BackgroundTaskError    a background task died (names the task and why); close and restart
    ├── StorageError           a file could not be read or written (names the file)
    │   ├── DataDirLockedError another process owns the data folder (names its pid)
    │   ├── DataDamagedError   a file is corrupt: SQLite says so, a check failed, a row does not parse
    │   └── SnapshotCorruptError the JSON snapshot is truncated or invalid
    ├── ControlChannelError    the owner of a data folder refused or did not answer a change
    ├── RemoteError            the owner refused a change sent on its control channel (why)
    ├── IndexCorruptError      the FAISS index file cannot be used
    └── EncoderError           the embedding model could not be loaded or run
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path


class MemoryBotError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(MemoryBotError):
    """A setting has a bad value; raised at start, never later."""


class InvalidInputError(MemoryBotError, ValueError):
    """Bad input from a caller; nothing was changed."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"invalid {field}: {rule}")
        self.field = field
        self.rule = rule


class UserNotFoundError(MemoryBotError, LookupError):
    def __init__(self, user_id: str) -> None:
        super().__init__(f"unknown user {user_id!r}: no context, history or memories are stored for it")
        self.user_id = user_id


class MemoryNotFoundError(MemoryBotError, LookupError):
    def __init__(self, user_id: str, memory_id: int) -> None:
        super().__init__(f"user {user_id!r} has no memory with id {memory_id}")
        self.user_id = user_id
        self.memory_id = memory_id


class VersionNotFoundError(MemoryBotError, LookupError):
    def __init__(self, user_id: str, version: int, latest: int) -> None:
        super().__init__(f"user {user_id!r} has no version {version}; versions 1 to {latest} exist")
        self.user_id = user_id
        self.version = version


class LockOrderError(MemoryBotError, RuntimeError):
    """A task asked for a lock level at or below one it holds: a deadlock was possible."""


class SystemClosedError(MemoryBotError, RuntimeError):
    """The MemorySystem is not running."""


class BackgroundTaskError(MemoryBotError):
    """A background task (commit writer, encoder batcher, embedder, ...) died; nothing it owed was done."""

    def __init__(self, task: str, cause: BaseException, at: datetime) -> None:
        self.task = task
        self.at = at
        self.cause_text = f"{type(cause).__name__}: {cause}"
        super().__init__(
            f"the memory system's {task} stopped ({self.cause_text}); every call fails "
            "until you close this MemorySystem and start a new one (the traceback is in the log)"
        )


class StorageError(MemoryBotError, OSError):
    """A data file could not be read or written."""

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None

    def __str__(self) -> str:
        return str(self.args[0])


class DataDirLockedError(StorageError):
    def __init__(self, path: Path, pid: int | None) -> None:
        holder = f"process {pid}" if pid else "another process"
        super().__init__(
            f"data folder {path.parent} is in use by {holder} (lock file {path}); "
            "stop that process or use another --data-dir",
            path,
        )
        self.pid = pid


class DataDamagedError(StorageError):
    """A data file is corrupt (SQLITE_CORRUPT or NOTADB, a failed check, a stored row that does not
    parse): the only case in which the advice is to restore or move the file aside."""


class SnapshotCorruptError(StorageError):
    """The JSON snapshot cannot be parsed or does not have the expected shape."""


class IndexCorruptError(MemoryBotError):
    """The FAISS index on disk cannot be used; it is rebuilt from SQLite."""


class EncoderError(MemoryBotError):
    """The embedding model could not be loaded or failed on input."""


class ControlChannelError(MemoryBotError):
    """The owner's control channel refused a connection or did not answer."""


class RemoteError(MemoryBotError):
    """An error the owner raised for a request on its control channel (its type and message)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class LocalClusterError(StorageError):
    """The local PostgreSQL cluster (``memory.storage.pgcluster``) could not be set up, started or stopped:
    the wheel is missing, a folder is out of the server user's reach, or the server failed (the
    message carries the tail of its log)."""
