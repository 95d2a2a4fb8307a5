"""The storage protocol: what ``MemorySystem`` asks of a backend, in typed units, not SQL.

A change is one ``Unit``: the user, the version it was built on, the new context and its
history entry, the memories to add, the ids to forget, the rows to rewrite. ``submit`` resolves
once the unit is committed, or to a ``Conflict`` when another process changed the user first;
the system then reloads the user and builds the change again (SQLite never conflicts: one
process owns its files). Reads return the project's own records. Everything SQL-specific,
SQLite's and PostgreSQL's, stays inside ``memory.storage``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from memory.context import UserContext
from memory.records import ErasureRecord, HistoryEntry, Memory


@dataclass(frozen=True, slots=True)
class ContextWrite:
    """The user's new current context and the history row recording it."""

    context: UserContext
    encoded: str  # the context's JSON, as stored in both places
    at: datetime
    actor: str
    change: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class NewMemory:
    """A memory to add, with its lexical document (``retrieval.lexical_document``): both
    backends index exactly these words, so both rank the same."""

    memory: Memory
    body: str
    context: str
    session_prev: int | None


@dataclass(frozen=True, slots=True)
class MemoryEdit:
    """A memory's new text (its embedding is dropped, to be made again) and new own words, and
    the new context words of the turns that were indexed with it as their previous one."""

    memory: Memory
    body: str
    following: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ErasureNote:
    """The erasure record a forget leaves: who, when, what kind, how many rows; no content."""

    at: datetime
    actor: str
    request: str
    rows: int


@dataclass(frozen=True, slots=True)
class Unit:
    """Everything one change of one user writes, committed all or nothing.

    ``expected_version`` is the version of the context the change was built on (0: the user
    had none). It is checked only when the unit writes a context or forgets the user (then a
    stored version other than it is a conflict and nothing is written); a unit that writes no
    context (memories only, embeddings, a forget that leaves the context as it was) is never
    in conflict. ``compact_before`` drops the history states stored before it except the
    current one (retention). Every memory id named must be ``user_id``'s: a backend may check.
    """

    user_id: str
    expected_version: int | None = None
    write: ContextWrite | None = None
    memories: tuple[NewMemory, ...] = ()
    forget_ids: tuple[int, ...] = ()
    forget_user: bool = False
    edits: tuple[MemoryEdit, ...] = ()
    redactions: tuple[tuple[int, str], ...] = ()  # (version, new stored state)
    compact_before: datetime | None = None
    erasure: ErasureNote | None = None
    embeddings: tuple[tuple[int, bytes], ...] = ()  # (memory id, float32 vector bytes)

    @property
    def empty(self) -> bool:
        return not (
            self.write
            or self.memories
            or self.forget_ids
            or self.forget_user
            or self.edits
            or self.redactions
            or self.compact_before
            or self.erasure
            or self.embeddings
        )


@dataclass(frozen=True, slots=True)
class Committed:
    """The unit is durable."""


@dataclass(frozen=True, slots=True)
class Conflict:
    """Nothing of the unit was written: the user is at ``current_version`` (0: gone), not the
    version the change was built on. Reload and build again."""

    current_version: int


Outcome = Committed | Conflict
COMMITTED = Committed()
# Called with the users another process changed (their cached contexts are stale), or with None
# when changes may have been missed (the notification connection was lost and is back): then
# every cached context is revalidated in one query (``context_versions``).
ChangeListener = Callable[[Sequence[str] | None], None]


class Store(Protocol):
    """A backend. ``shared`` stores serve several processes at once (no folder lock, no JSON
    snapshot, no control socket: the database itself arbitrates); the others belong to one."""

    @property
    def shared(self) -> bool: ...

    @property
    def location(self) -> str:
        """Where the data is, for messages (a path, or a URL without its password)."""
        ...

    async def close(self) -> None: ...

    # -- writing -------------------------------------------------------------------------------
    def submit(self, unit: Unit) -> Awaitable[Outcome]:
        """Queue ``unit`` for the next group commit (queued at once, in call order)."""
        ...

    async def reserve_memory_ids(self, count: int) -> list[int]:
        """``count`` fresh memory ids, never handed out before (in any process)."""
        ...

    async def purge_erased(self) -> None:
        """Make deleted rows leave the files, where the backend keeps them a while."""
        ...

    async def set_embedding_model(self, model: str, *, keep_vectors: bool = False) -> None:
        """Record the embedding model; embeddings of another model are dropped to be remade,
        unless ``keep_vectors`` (the same model's vectors under a new name)."""
        ...

    def listen(self, listener: ChangeListener) -> None:
        """Be told which users other processes changed (never called for a store that is not
        ``shared``)."""
        ...

    # -- contexts and history -----------------------------------------------------------------
    async def load_contexts(self) -> list[tuple[str, bytes]]: ...

    async def context_data(self, user_id: str) -> bytes | None: ...

    async def context_versions(self, user_ids: Sequence[str]) -> dict[str, int]:
        """The stored version of each user that has a context (revalidating a cache)."""
        ...

    async def stored_version(self, user_id: str) -> int: ...

    async def history(self, user_id: str) -> list[HistoryEntry]: ...

    async def history_entry(self, user_id: str, version: int) -> HistoryEntry | None: ...

    async def history_since(self, user_id: str, at: datetime | None) -> list[HistoryEntry]: ...

    async def users_with_history_before(self, cutoff: datetime) -> list[str]: ...

    async def version_count(self, user_id: str) -> int: ...

    async def erasures(self, user_id: str | None = None) -> list[ErasureRecord]: ...

    # -- memories ------------------------------------------------------------------------------
    async def memories(
        self,
        user_id: str,
        *,
        limit: int = -1,
        offset: int = 0,
        kinds: Iterable[str] | None = None,
        scopes: Iterable[str] | None = None,
    ) -> list[Memory]: ...

    async def memories_by_id(self, ids: Sequence[int]) -> dict[int, Memory]: ...

    async def memories_by_source(self, source_id: str) -> list[Memory]: ...

    async def memories_in_scope(self, scope: str, user_id: str | None = None) -> list[Memory]: ...

    async def memories_before(
        self, cutoff: datetime, kinds: Iterable[str], user_id: str | None = None
    ) -> list[Memory]: ...

    async def memory_ids(self, user_id: str) -> list[int]: ...

    async def scoped_ids(self, user_id: str, scopes: Iterable[str]) -> list[int]: ...

    async def scopes_of(self, user_id: str) -> list[str]: ...

    async def count_memories(self, user_id: str) -> int: ...

    async def memory_counts(self) -> dict[str, int]: ...

    async def last_memory(self, user_id: str) -> Memory | None: ...

    async def session_neighbours(self, ids: Iterable[int]) -> dict[int, tuple[int | None, int | None]]: ...

    async def lexical_search(
        self,
        user_id: str,
        terms: Sequence[str],
        limit: int,
        kinds: Iterable[str] | None = None,
        context_weight: float = 1.0,
        scopes: Iterable[str] | None = None,
    ) -> list[tuple[int, float]]:
        """(memory id, BM25 with the user's own IDF), best first (``lexical.user_bm25``)."""
        ...

    # -- embeddings ----------------------------------------------------------------------------
    async def unembedded(self) -> list[Memory]:
        """The memories still waiting for a vector (a shared store claims them for this
        process, so a crashed process's rows are still embedded by another)."""
        ...

    async def embedding_watermark(self) -> tuple[int, int]: ...

    async def embedded_ids(self) -> list[tuple[int, str]]: ...

    async def embeddings_for(self, ids: Sequence[int]) -> list[tuple[int, str, bytes]]: ...

    # -- the database itself -------------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None: ...

    async def database_id(self) -> str: ...

    async def schema_version(self) -> int: ...

    async def count(self, table: str) -> int:
        """Rows of ``contexts``, ``context_history`` or ``memories``."""
        ...

    async def lexical_rows(self) -> tuple[int, int]:
        """(lexical documents, documents whose memory is gone)."""
        ...

    async def integrity_problems(self) -> list[str]:
        """The database's own consistency check; ["ok"] when sound."""
        ...

    def consistent_reads(self) -> AbstractAsyncContextManager[None]:
        """Reads inside see one state of the database and can change nothing (a read-only
        transaction): what the admin CLI's ``verify`` and ``stats`` count adds up."""
        ...

    def stats(self) -> dict[str, int]:
        """The writer's counters (queue depth, batches, units, largest batch, conflicts)."""
        ...


@runtime_checkable
class DenseSearch(Protocol):
    """A store that keeps the vectors itself and scores one user's memories against a query
    (PostgreSQL + pgvector); a store without it is served by the per-process FAISS index."""

    async def dense_search(
        self, user_id: str, vector: bytes, limit: int, scopes: Iterable[str] | None = None
    ) -> list[tuple[int, float]]:
        """(memory id, cosine similarity), best first, of the user's embedded memories (said in
        ``scopes``, when given): an exact scan, never an approximate index."""
        ...

    async def dense_scores(self, user_id: str, vector: bytes, ids: Sequence[int]) -> dict[int, float]:
        """The cosine similarity of each of ``ids`` that is the user's and embedded."""
        ...

    async def embedded_state(self, user_id: str) -> tuple[int, int]:
        """(the user's memories with a vector, the highest such id)."""
        ...

    async def memory_ids(self, user_id: str) -> list[int]: ...

    async def embeddings_for(self, ids: Sequence[int]) -> list[tuple[int, str, bytes]]: ...
