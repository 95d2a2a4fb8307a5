"""PostgreSQL rows as the project's records, and pgvector's binary format as float32 bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import asyncpg
import numpy as np

from memory.context import UserContext, freeze_json, parse_stored_json, parse_time, stored_row
from memory.records import HistoryEntry, Memory

MEMORY_COLUMNS = "id, user_id, text, kind, created_at, metadata, source_id, scope"
HISTORY_SELECT = "SELECT user_id, version, at, actor, change, state FROM context_history"


def memory_from_row(row: asyncpg.Record, path: Path) -> Memory:
    where = f"the memories row {row[0]} (of user {row[1]!r})"
    with stored_row(path, where):
        return Memory(
            id=row[0],
            user_id=row[1],
            text=row[2],
            kind=row[3],
            created_at=parse_time("created_at", row[4]),
            metadata=freeze_json(parse_stored_json(row[5], path, where)),
            source_id=row[6],
            scope=row[7],
        )


def history_entry(row: asyncpg.Record, path: Path) -> HistoryEntry:
    where = f"the context_history row of user {row[0]!r} at version {row[1]}"
    with stored_row(path, where):
        return HistoryEntry(
            user_id=row[0],
            version=row[1],
            at=parse_time("at", row[2]),
            actor=row[3],
            change=freeze_json(parse_stored_json(row[4], path, where)),
            context=UserContext.from_dict(parse_stored_json(row[5], path, where)),
        )


# pgvector's binary form: dimensions and a reserved word (uint16 each), then big-endian float4s.
def encode_vector(value: bytes) -> bytes:
    floats = np.frombuffer(value, dtype="<f4")
    return struct.pack(">HH", len(floats), 0) + floats.astype(">f4").tobytes()


def decode_vector(data: bytes) -> bytes:
    dim, _ = struct.unpack_from(">HH", data)
    return np.frombuffer(data, dtype=">f4", count=dim, offset=4).astype("<f4").tobytes()


async def register_vector(conn: asyncpg.Connection) -> None:
    """Vectors travel as the float32 bytes the rest of the program uses, in binary."""
    await conn.set_type_codec(
        "vector", schema="public", encoder=encode_vector, decoder=decode_vector, format="binary"
    )
