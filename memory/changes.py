"""How a change is made: built from the current context, committed as one unit, then installed.

Every operation of ``MemorySystem`` is a ``build(old) -> Draft`` function run under the user's
lock. The draft becomes a ``Unit`` of the storage protocol (the lexical documents of new memories
included, so every backend indexes the same words); once the store has committed it, the new
context is installed in the cache. When another process changed the user first (a shared
store answers ``Conflict``), the user is reloaded and ``build`` runs again on what is really
there: per-user linearizability across processes without a database lock held over Python code.

``ContextCache`` is this process's map of frozen contexts; with a shared store it is told which
users other processes changed and reloads them before they are read or changed here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from memory.context import UserContext, stored_context
from memory.errors import StorageError
from memory.records import Memory
from memory.retrieval import lexical_document, same_session
from memory.storage.protocol import (
    Committed,
    ContextWrite,
    ErasureNote,
    MemoryEdit,
    NewMemory,
    Store,
    Unit,
)

log = logging.getLogger(__name__)
MAX_FRESH_CONTEXTS = 10_000
MAX_CACHED_LAST_MEMORIES = 100_000
# A change rebuilt this often in a row still lost to other processes: the user is written in a
# tight loop elsewhere; give up with an error rather than spin.
MAX_ATTEMPTS = 50


@dataclass
class Draft:
    """What one change writes; ``new`` None leaves the context as it is."""

    new: UserContext | None = None
    change: Mapping[str, Any] | None = None
    memories: list[Memory] = field(default_factory=list)
    forget_ids: tuple[int, ...] = ()
    forget_user: bool = False
    edits: tuple[MemoryEdit, ...] = ()
    redactions: tuple[tuple[int, str], ...] = ()
    compact_before: datetime | None = None
    erasure: tuple[str, int] | None = None  # (request, rows)


Build = Callable[[UserContext | None], Awaitable[Draft | None]]
T = TypeVar("T")


async def finish_anyway(work: Awaitable[T]) -> tuple[T, bool]:
    """Wait for ``work`` to finish even through cancellation: (its result, whether the caller
    was cancelled meanwhile).

    What has started (a commit, or the cleanup after one) must end as it would have: a caller
    cancelled meanwhile gets its CancelledError only once it has.
    """
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done() and task.cancelled():
                raise
            cancelled = True  # even if the task ended in the same step: the caller asked to stop
            if not task.done():
                continue
        return task.result(), cancelled  # raises the work's own error, if it failed


async def wait_for_commit(commit: Awaitable[Any]) -> bool:
    """``finish_anyway`` for work whose result is not needed: True if the caller was cancelled."""
    return (await finish_anyway(commit))[1]


class ContextCache:
    """The current frozen context of every known user, and what is known to be stale."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.contexts: dict[str, UserContext] = {}
        self.encoded: dict[str, bytes] = {}
        self._fresh: dict[str, UserContext] = {}
        self._stale: set[str] = set()
        self._all_stale = False
        self.last_memory: dict[str, Memory | None] = {}
        self.reloads = 0

    def load(self, loaded: Sequence[tuple[UserContext, bytes]]) -> None:
        for ctx, data in loaded:
            self.contexts[ctx.user_id] = ctx
            self.encoded[ctx.user_id] = data

    def get(self, uid: str) -> UserContext | None:
        return self.contexts.get(uid)

    def current(self, uid: str, now: datetime) -> UserContext:
        """The stored context, or the fresh one a new user is shown until its first change."""
        ctx = self.contexts.get(uid) or self._fresh.get(uid)
        if ctx is None:
            if len(self._fresh) >= MAX_FRESH_CONTEXTS:
                self._fresh.clear()
            ctx = self._fresh[uid] = UserContext.new(uid, now)
        return ctx

    def install(self, new: UserContext, encoded: bytes) -> None:
        self.contexts[new.user_id] = new
        self.encoded[new.user_id] = encoded
        self._fresh.pop(new.user_id, None)

    def drop(self, uid: str) -> None:
        for mapping in (self.contexts, self.encoded, self._fresh, self.last_memory):
            mapping.pop(uid, None)

    # -- coherence with other processes ------------------------------------------------------

    def mark_stale(self, user_ids: Sequence[str] | None) -> None:
        """Another process changed ``user_ids`` (None: anything may have changed)."""
        if user_ids is None:
            self._all_stale = True
            return
        for uid in user_ids:
            self._stale.add(uid)
            self.last_memory.pop(uid, None)  # its session may have gone on elsewhere

    async def fresh(self, uid: str) -> None:
        """Reload ``uid`` if another process changed it since it was cached."""
        if self._all_stale:
            await self.revalidate()
        if uid in self._stale:
            await self.reload(uid)

    async def fresh_all(self) -> None:
        if self._all_stale:
            await self.revalidate()
        for uid in sorted(self._stale):
            await self.reload(uid)

    async def revalidate(self) -> None:
        """After missed notifications: every cached version checked in one query."""
        self._all_stale = False
        stored = await self._store.context_versions(sorted(self.contexts))
        changed = [uid for uid, ctx in self.contexts.items() if stored.get(uid) != ctx.version]
        self.mark_stale(changed)
        # Users made elsewhere meanwhile are found when first read (``reload`` on a miss).

    async def reload(self, uid: str) -> UserContext | None:
        """The stored context of ``uid`` now (None: it has none), installed in the cache."""
        self._stale.discard(uid)
        self.last_memory.pop(uid, None)
        self.reloads += 1
        data = await self._store.context_data(uid)
        if data is None:
            self.contexts.pop(uid, None)
            self.encoded.pop(uid, None)
            return None
        ctx = stored_context(data, Path(self._store.location), f"the context of user {uid!r}")
        self.install(ctx, data)
        return ctx


class ChangeRunner:
    """Runs ``build`` functions to commitment (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        cache: ContextCache,
        session_gap_minutes: float,
        committed: Callable[[list[Memory]], None],
    ) -> None:
        self._store = store
        self._cache = cache
        self._gap = session_gap_minutes
        self._committed = committed
        self.conflicts = 0

    async def memory_ids(self, count: int) -> list[int]:
        return await self._store.reserve_memory_ids(count)

    async def run(self, uid: str, build: Build, actor: str) -> tuple[Draft | None, bool]:
        """Under the caller's lock of ``uid``: build, commit, install; rebuilt on a conflict.

        Returns the committed draft (None when ``build`` found nothing to do) and whether the
        caller was cancelled meanwhile (the change applied all the same)."""
        await self._cache.fresh(uid)
        for _ in range(MAX_ATTEMPTS):
            old = self._cache.get(uid)
            draft = await build(old)
            if draft is None:
                return None, False
            now = datetime.now(UTC)
            unit, encoded = await self._unit(uid, old, draft, now, actor)
            try:
                outcome, cancelled = await finish_anyway(self._store.submit(unit))
            except BaseException:
                self._cache.last_memory.pop(uid, None)  # not committed: the cached link may be wrong
                raise
            if isinstance(outcome, Committed):
                if draft.forget_user:
                    self._cache.drop(uid)
                elif draft.new is not None and encoded is not None:
                    self._cache.install(draft.new, encoded)
                if draft.memories:
                    self._committed(draft.memories)
                return draft, cancelled
            self.conflicts += 1
            await self._cache.reload(uid)
            if cancelled:
                raise StorageError(
                    f"the change of user {uid!r} was cancelled while another process changed the "
                    "user first; nothing of it was written",
                    Path(self._store.location),
                )
        raise StorageError(
            f"user {uid!r} kept being changed by other processes; {MAX_ATTEMPTS} attempts "
            "lost to them and nothing of this change was written: try again",
            Path(self._store.location),
        )

    async def _unit(
        self, uid: str, old: UserContext | None, draft: Draft, now: datetime, actor: str
    ) -> tuple[Unit, bytes | None]:
        write = encoded = None
        if draft.new is not None:
            encoded = draft.new.to_json()
            write = ContextWrite(draft.new, encoded.decode(), now, actor, dict(draft.change or {}))
        erasure = None
        if draft.erasure is not None:
            erasure = ErasureNote(now, actor, draft.erasure[0], draft.erasure[1])
        unit = Unit(
            user_id=uid,
            expected_version=old.version if old is not None else 0,
            write=write,
            memories=await self._new_memories(draft.memories),
            forget_ids=draft.forget_ids,
            forget_user=draft.forget_user,
            edits=draft.edits,
            redactions=draft.redactions,
            compact_before=draft.compact_before,
            erasure=erasure,
        )
        return unit, encoded

    async def _new_memories(self, memories: list[Memory]) -> tuple[NewMemory, ...]:
        """Rows for new memories, each linked to the previous one when in the same session."""
        rows: list[NewMemory] = []
        last = self._cache.last_memory
        for memory in memories:
            uid = memory.user_id
            if uid not in last:
                if len(last) >= MAX_CACHED_LAST_MEMORIES:
                    last.clear()
                last[uid] = await self._store.last_memory(uid)
            previous = last[uid]
            linked = previous if same_session(previous, memory, self._gap) else None
            body, context = lexical_document(memory, linked)
            rows.append(NewMemory(memory, body, context, linked.id if linked else None))
            last[uid] = memory
        return tuple(rows)
