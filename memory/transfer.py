"""The per-user export document: what ``export_user`` writes and ``import_user`` reads back.

Each exported memory carries a ``key`` derived from what it is (kind, time, text), not from
its row id, which a database hands out afresh. An import recomputes the key of every memory
it reads and skips those the user already has, so importing the same export twice adds
nothing the second time.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from memory import validation
from memory.context import PRIVATE_SCOPE, FrozenMap, UserContext, freeze_json, parse_time
from memory.errors import InvalidInputError
from memory.records import HistoryEntry, Memory
from memory.settings import LimitSettings

EXPORT_FORMAT: Final = "memory-bot-user-export/1"


def memory_key(kind: str, created_at: datetime, text: str) -> str:
    """A stable identity of a memory across exports and databases."""
    identity = orjson.dumps([kind, created_at.astimezone(UTC).isoformat(), text])
    return hashlib.sha256(identity).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class ImportedMemory:
    """A memory read from an export, validated, not yet given an id."""

    text: str
    kind: str
    created_at: datetime
    metadata: FrozenMap
    source_id: str | None
    exported_id: int | None  # its id in the exporting database, which recent exchanges cite
    scope: str = PRIVATE_SCOPE  # where it was said; an export from before scopes: the private one

    @property
    def key(self) -> str:
        return memory_key(self.kind, self.created_at, self.text)


@dataclass(frozen=True, slots=True)
class ImportDocument:
    user_id: str
    context: UserContext | None
    memories: tuple[ImportedMemory, ...]

    def match(self, existing: Iterable[Memory]) -> tuple[list[ImportedMemory], dict[int, int]]:
        """The memories the user does not have yet, and the ids of those it has (export id ->
        id here). Equal memories inside the export are kept as many as there are."""
        have: defaultdict[str, deque[int]] = defaultdict(deque)
        for stored in existing:
            have[memory_key(stored.kind, stored.created_at, stored.text)].append(stored.id)
        fresh: list[ImportedMemory] = []
        ids: dict[int, int] = {}
        for memory in self.memories:
            same = have.get(memory.key)
            if not same:
                fresh.append(memory)
            elif memory.exported_id is not None:
                ids[memory.exported_id] = same.popleft()
            else:
                same.popleft()
        return fresh, ids


def with_memory_ids(context: UserContext, ids: Mapping[int, int]) -> UserContext:
    """The context with its recent exchanges citing this database's memory ids (None when the
    exchange's memory was not in the export), so a later forget finds them."""
    recent = tuple(
        replace(e, memory_id=ids.get(e.memory_id)) if e.memory_id is not None else e for e in context.recent
    )
    return context.copy_with(recent=recent) if recent != context.recent else context


def export_document(
    user_id: str,
    context: UserContext | None,
    history: Sequence[HistoryEntry],
    memories: Sequence[Memory],
) -> dict[str, Any]:
    """Everything stored about one user, as JSON-safe data."""
    return {
        "format": EXPORT_FORMAT,
        "user_id": user_id,
        "exported_at": datetime.now(UTC).isoformat(),
        "context": context.to_dict() if context else None,
        "history": [entry.to_dict() for entry in history],
        "memories": [
            {**memory.to_dict(), "key": memory_key(memory.kind, memory.created_at, memory.text)}
            for memory in memories
        ],
    }


def read_import(data: Any, limits: LimitSettings, now: datetime) -> ImportDocument:
    """Validate a whole export against this system's limits before anything is changed."""
    if not isinstance(data, Mapping) or data.get("format") != EXPORT_FORMAT:
        raise InvalidInputError("import", f"is not a memory-bot export (format {EXPORT_FORMAT!r})")
    uid = validation.user_id(data.get("user_id"))
    raw_memories = data.get("memories", [])
    if not isinstance(raw_memories, list):
        raise InvalidInputError("import.memories", "must be a list")
    memories = tuple(_read_memory(raw, limits, now) for raw in raw_memories)
    context = None
    if data.get("context") is not None:
        context = validation.context_limits(UserContext.from_dict(data["context"]), limits)
        if context.user_id != uid:
            raise InvalidInputError("import.context", "belongs to another user id")
    return ImportDocument(uid, context, memories)


def _read_memory(raw: Any, limits: LimitSettings, now: datetime) -> ImportedMemory:
    if not isinstance(raw, Mapping):
        raise InvalidInputError("import.memories", "each memory must be an object")
    if "created_at" not in raw:
        raise InvalidInputError("memory created_at", "is missing: each memory needs its ISO 8601 time")
    key = raw.get("key")
    if key is not None and not isinstance(key, str):
        raise InvalidInputError("memory key", f"must be a string, got {type(key).__name__}")
    exported_id = raw.get("id")
    if exported_id is not None:
        exported_id = validation.positive_int("memory id", exported_id)
    return ImportedMemory(
        text=validation.text("memory text", raw.get("text"), limits.max_text_length, allow_empty=False),
        kind=validation.kind(raw.get("kind", "note"), "memory kind"),
        created_at=validation.timestamp(
            "memory created_at", parse_time("memory created_at", raw["created_at"]), now
        ),
        metadata=freeze_json(validation.metadata(raw.get("metadata"))),
        source_id=validation.source_id(raw.get("source_id")),
        exported_id=exported_id,
        scope=validation.scope(raw.get("scope", PRIVATE_SCOPE), "memory scope"),
    )
