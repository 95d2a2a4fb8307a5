"""PostgreSQL's column lists for the shared row readers (``rows.py``), and pgvector's binary
format as float32 bytes."""

from __future__ import annotations

import struct

import asyncpg
import numpy as np

from memory.storage.rows import history_entry, memory_from_row

__all__ = ["HISTORY_SELECT", "MEMORY_COLUMNS", "history_entry", "memory_from_row", "register_vector"]

MEMORY_COLUMNS = "id, user_id, text, kind, created_at, metadata, source_id, scope"
HISTORY_SELECT = "SELECT user_id, version, at, actor, change, state FROM context_history"


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
