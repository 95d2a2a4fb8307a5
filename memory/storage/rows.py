"""Stored rows as the project's records, the same for both backends: the columns are selected
in this order by each (``MEMORY_COLUMNS`` / ``HISTORY_SELECT`` of its own dialect), and a row
whose JSON or time is damaged is reported as that row's damage (``stored_row``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import orjson

from memory.context import (
    ROW_DAMAGE,
    UserContext,
    damaged_row,
    freeze_json,
    parse_stored_json,
    parse_time,
    stored_row,
)
from memory.records import HistoryEntry, Memory


class Row(Protocol):
    """A row of either driver (sqlite3.Row, a tuple, asyncpg.Record): read by position."""

    def __getitem__(self, index: int, /) -> Any: ...


def memory_from_row(row: Row, path: Path) -> Memory:
    """(id, user_id, text, kind, created_at, metadata, source_id, scope).

    One try around the whole row rather than ``stored_row`` per field: a retrieve with the
    reranker reads about a hundred rows (the pool and its neighbours), and the context managers
    and the error text made up front cost 15 of the 40 microseconds a row took."""
    try:
        return Memory(
            id=row[0],
            user_id=row[1],
            text=row[2],
            kind=row[3],
            created_at=parse_time("created_at", row[4]),
            metadata=freeze_json(orjson.loads(row[5])),
            source_id=row[6],
            scope=row[7],
        )
    except ROW_DAMAGE as exc:
        raise damaged_row(path, f"the memories row {row[0]} (of user {row[1]!r})", exc) from exc


def history_entry(row: Row, path: Path) -> HistoryEntry:
    """(user_id, version, at, actor, change, state)."""
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
