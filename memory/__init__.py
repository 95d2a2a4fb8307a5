"""memory-bot's memory library: durable per-user contexts and semantic memories.

Only the names in ``__all__`` are public; the bot and the admin CLI use nothing else.
"""

from memory.atomic import atomic_write
from memory.context import PRIVATE_SCOPE, Exchange, UserContext
from memory.encoder import Encoder, HashingEncoder
from memory.errors import (
    BackgroundTaskError,
    ConfigError,
    ControlChannelError,
    DataDamagedError,
    DataDirLockedError,
    EncoderError,
    IndexCorruptError,
    InvalidInputError,
    LockOrderError,
    MemoryBotError,
    MemoryNotFoundError,
    RemoteError,
    SnapshotCorruptError,
    StorageError,
    SystemClosedError,
    UserNotFoundError,
    VersionNotFoundError,
)
from memory.records import ErasureRecord, HistoryEntry, Memory, ScoredMemory
from memory.recovery import StartupReport
from memory.settings import Settings, load_settings
from memory.supervisor import Faults, SystemState, TaskName
from memory.system import MemorySystem

__all__ = [
    "PRIVATE_SCOPE",
    "BackgroundTaskError",
    "ConfigError",
    "ControlChannelError",
    "DataDamagedError",
    "DataDirLockedError",
    "Encoder",
    "EncoderError",
    "ErasureRecord",
    "Exchange",
    "Faults",
    "HashingEncoder",
    "HistoryEntry",
    "IndexCorruptError",
    "InvalidInputError",
    "LockOrderError",
    "Memory",
    "MemoryBotError",
    "MemoryNotFoundError",
    "MemorySystem",
    "RemoteError",
    "ScoredMemory",
    "Settings",
    "SnapshotCorruptError",
    "StartupReport",
    "StorageError",
    "SystemClosedError",
    "SystemState",
    "TaskName",
    "UserContext",
    "UserNotFoundError",
    "VersionNotFoundError",
    "atomic_write",
    "load_settings",
]
