"""The frozen records the public API returns besides UserContext."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from memory.context import PRIVATE_SCOPE, FrozenMap, UserContext, thaw_json


@dataclass(frozen=True, slots=True)
class Memory:
    """One remembered text of one user; its embedding lives beside it in SQLite. ``scope`` is
    where it was said (opaque to the library: e.g. ``dm``, ``guild:<id>``)."""

    id: int
    user_id: str
    text: str
    kind: str
    created_at: datetime
    metadata: FrozenMap
    source_id: str | None = None
    scope: str = PRIVATE_SCOPE

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "text": self.text,
            "kind": self.kind,
            "created_at": self.created_at.isoformat(),
            "metadata": thaw_json(self.metadata),
            "source_id": self.source_id,
            "scope": self.scope,
        }


@dataclass(frozen=True, slots=True)
class ScoredMemory:
    """A retrieved memory, its fused score and the rankers that found it."""

    memory: Memory
    score: float
    rankers: tuple[str, ...]
    dense_score: float | None = None
    lexical_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.memory.to_dict(),
            "score": self.score,
            "rankers": list(self.rankers),
            "dense_score": self.dense_score,
            "lexical_score": self.lexical_score,
        }


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One change to a context: who made it, when, what changed, and the state after it."""

    user_id: str
    version: int
    at: datetime
    actor: str
    change: FrozenMap
    context: UserContext

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "version": self.version,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "change": thaw_json(self.change),
            "context": self.context.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class ErasureRecord:
    """One forget, for the audit log: who asked, when, what kind of request, how many rows."""

    user_id: str
    at: datetime
    actor: str
    request: str
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "request": self.request,
            "rows": self.rows,
        }
