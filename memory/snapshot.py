"""The JSON snapshot of every context: human-readable, a second source for recovery.

Written atomically (temp file in the same folder, write, flush, fsync, ``os.replace``, fsync
of the folder), so a crash leaves the old file or the new one, never a mix. The writer takes
each context already encoded (they are immutable, so their JSON is made once, at commit), which
keeps the event loop free: joining bytes is cheap, the write and fsyncs run off the loop.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os
import orjson

from memory.atomic import discard_temp, fsync_dir, temp_path
from memory.errors import SnapshotCorruptError, StorageError

FORMAT = "memory-bot-contexts"
FORMAT_VERSION = 1


CHUNK = 2_000  # contexts per write: a join of this size holds the GIL for well under a ms


async def write_snapshot(path: Path, encoded_contexts: Sequence[bytes], count: int) -> int:
    """Atomically replace ``path``; returns the bytes written.

    Written in chunks: one join of every context (tens of MB for 100k users) would hold the
    GIL, and so stall the event loop, for longer than the whole write takes in pieces.
    """
    header = orjson.dumps(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "saved_at": datetime.now(UTC).isoformat(),
            "count": count,
        }
    )
    tmp = temp_path(path)
    written = 0
    try:
        async with aiofiles.open(tmp, "wb") as fh:
            written += await fh.write(header[:-1] + b',"users":[')
            for start in range(0, len(encoded_contexts), CHUNK):
                chunk = b",".join(encoded_contexts[start : start + CHUNK])
                written += await fh.write(chunk + b"," if start + CHUNK < len(encoded_contexts) else chunk)
            written += await fh.write(b"]}\n")
            await fh.flush()
            await aiofiles.os.wrap(os.fsync)(fh.fileno())
        await aiofiles.os.replace(tmp, path)
        await aiofiles.os.wrap(fsync_dir)(path.parent)
    except OSError as exc:
        raise StorageError(f"could not write the snapshot {path}: {exc}", path) from exc
    finally:
        await aiofiles.os.wrap(discard_temp)(tmp)
    return written


def read_snapshot(path: Path) -> list[dict[str, Any]]:
    """The contexts in ``path`` as dicts; a truncated or invalid file raises SnapshotCorruptError."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise StorageError(f"could not read the snapshot {path}: {exc}", path) from exc
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SnapshotCorruptError(
            f"snapshot {path} is truncated or not valid JSON ({exc}); it is rewritten from the "
            "database at the next save, or restore it from a backup",
            path,
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SnapshotCorruptError(f"snapshot {path} is not a memory-bot snapshot", path)
    if data.get("format_version") != FORMAT_VERSION:
        raise SnapshotCorruptError(
            f"snapshot {path} has format version {data.get('format_version')!r}; "
            f"this program reads version {FORMAT_VERSION}",
            path,
        )
    users = data.get("users")
    if not isinstance(users, list) or len(users) != data.get("count"):
        raise SnapshotCorruptError(
            f"snapshot {path} is incomplete: it declares {data.get('count')!r} users", path
        )
    return users
