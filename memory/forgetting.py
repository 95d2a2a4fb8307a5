"""Forgetting and rewriting what a person said: every operation that takes text out of the
memory (a memory, a message's source, a scope, a user, old exchanges) or puts other words in
its place (an edited message).

Everywhere means: the rows and their terms, the exchanges quoting them in ``recent`` and in
every stored history state, the snapshot, the index; an erasure record (no content) is kept,
and each is logged on ``memory.audit``. A mixin of ``MemorySystem``: the operations run under
its user locks and through its change runner, like every other change.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from memory import validation
from memory.autosave import AutoSaver
from memory.changes import ContextCache, Draft, wait_for_commit
from memory.context import UserContext
from memory.erasure import (
    ErasureTarget,
    edited_exchange_text,
    edited_exchanges,
    redacted_states,
    without_exchanges,
)
from memory.errors import InvalidInputError, MemoryNotFoundError
from memory.locks import UserLocks
from memory.ranker import forget_cached_texts
from memory.records import ErasureRecord, Memory
from memory.retrieval import lexical_document
from memory.semantic import SemanticMemory
from memory.settings import Settings
from memory.storage.protocol import MemoryEdit, Store

# Erasures are logged here at INFO, a level the bot shows by default: an operator can prove
# a deletion request was honoured (the line names the user, the request and the counts only).
audit = logging.getLogger("memory.audit")


class Forgetting:
    """The forget and edit operations of ``MemorySystem`` (see the module docstring)."""

    settings: Settings
    _store: Store
    _locks: UserLocks
    _cache: ContextCache
    _semantic: SemanticMemory
    _saver: AutoSaver | None

    if TYPE_CHECKING:

        def _require_running(self) -> None: ...

        async def _change_anyway(
            self, uid: str, build: Callable[[UserContext], Any], actor: str
        ) -> tuple[Draft | None, bool]: ...

    async def forget_memory(self, user_id: str | int, memory_id: int, *, actor: str = "api") -> Memory:
        """Remove one of the user's memories everywhere; another user's id is 'not found'.

        Everywhere means: its row and its terms, the exchange quoting it in ``recent`` and in
        every stored history state, the snapshot, the index; an erasure record is kept.
        """
        self._require_running()
        uid = validation.user_id(user_id)
        memory_id = validation.positive_int("memory_id", memory_id)
        actor = validation.actor(actor)
        async with self._locks.hold(uid):
            found = (await self._store.memories_by_id([memory_id])).get(memory_id)
            if found is None or found.user_id != uid:
                raise MemoryNotFoundError(uid, memory_id)
            cancelled, changed = await self._erase(uid, [found], (), "forget_memory", actor)
        await self._after_erasure(cancelled, snapshot=changed)
        return found

    async def forget_source(self, source_id: str, *, actor: str = "api") -> list[Memory]:
        """Forget what was made from one source (e.g. a deleted Discord message): its memories
        and the exchanges that quote it, for whichever users they belong to."""
        self._require_running()
        source = validation.source_id(source_id)
        if source is None:
            raise InvalidInputError("source_id", "must not be empty")
        actor = validation.actor(actor)
        # Without exchange memories, an exchange can only be found in the contexts.
        users = await self._source_users(source, scan_contexts=not self.settings.retrieval.store_exchanges)
        forgotten: list[Memory] = []
        cancelled = changed = False
        for uid in sorted(users):
            async with self._locks.hold(uid):
                mine = [m for m in await self._store.memories_by_source(source) if m.user_id == uid]
                was_cancelled, was_changed = await self._erase(uid, mine, (source,), "forget_source", actor)
            cancelled, changed = cancelled or was_cancelled, changed or was_changed
            forgotten += mine
        if users:
            await self._after_erasure(cancelled, snapshot=changed)
        return forgotten

    async def _source_users(self, source: str, *, scan_contexts: bool) -> set[str]:
        """The users with a memory made from ``source`` (and, scanning, a recent exchange)."""
        users = {memory.user_id for memory in await self._store.memories_by_source(source)}
        if scan_contexts:
            users.update(
                uid
                for uid, ctx in self._cache.contexts.items()
                if any(e.source_id == source for e in ctx.recent)
            )
        return users

    async def forget_user(self, user_id: str | int, *, actor: str = "api") -> bool:
        """Remove everything of the user: context, history, memories, vectors, snapshot entry.

        Only the erasure record remains (who asked, when, how many rows; no content).
        """
        self._require_running()
        uid = validation.user_id(user_id)
        actor = validation.actor(actor)
        ids: list[int] = []
        versions = 0
        known = False

        async def build(old: UserContext) -> Draft:
            nonlocal ids, versions, known
            ids = await self._store.memory_ids(uid)
            versions = await self._store.version_count(uid)
            stored = self._cache.get(uid) is not None
            known = stored or bool(ids) or bool(versions)
            return Draft(forget_user=True, erasure=("forget_user", len(ids) + versions + stored))

        async with self._locks.hold(uid):
            _, cancelled = await self._change_anyway(uid, build, actor)
            self._semantic.users_changed([uid])
            cancelled = await wait_for_commit(self._semantic.forget(ids)) or cancelled
            audit.info(
                "erasure: forgot user %s (%d memories, %d versions) at the request of %s",
                uid,
                len(ids),
                versions,
                actor,
            )
        await self._after_erasure(cancelled, snapshot=True)
        return known

    async def _erase(
        self,
        uid: str,
        memories: list[Memory],
        sources: tuple[str, ...],
        request: str,
        actor: str,
        target: ErasureTarget | None = None,
        *,
        compact_before: datetime | None = None,
    ) -> tuple[bool, bool]:
        """Under the user's lock: delete ``memories`` and every exchange quoting them or
        ``sources`` (or matching ``target``, when given), in one unit; ``compact_before`` also
        drops the history states stored before it (retention). Returns (the caller was
        cancelled meanwhile, though it all applied; the context changed, so the snapshot
        quotes what was forgotten)."""
        target = target or ErasureTarget.of(memories, sources)

        async def build(old: UserContext) -> Draft:
            # Only exchanges are quoted in contexts. States older than the oldest forgotten
            # exchange cannot quote it; a bare source's exchange can be anywhere in the history.
            redactions: list[tuple[int, str]] = []
            if sources or target.anywhere or target.earliest is not None:
                since = target.earliest if memories and not target.anywhere else None
                entries = await self._store.history_since(uid, since)
                if compact_before is not None:  # those are deleted below, not rewritten
                    entries = [e for e in entries if e.at >= compact_before]
                redactions = redacted_states(entries, target)
            stored = self._cache.get(uid)
            kept = without_exchanges(stored, target) if stored is not None else None
            new = change = None
            if stored is not None and kept is not None:
                new = stored.copy_with(recent=kept, version=stored.version + 1)
                change = {"op": "forget", "request": request, "memories": len(memories)}
            return Draft(
                new,
                change,
                forget_ids=tuple(m.id for m in memories),
                redactions=tuple(redactions),
                compact_before=compact_before if stored is not None else None,
                erasure=(request, len(memories) + len(redactions)),
            )

        draft, cancelled = await self._change_anyway(uid, build, actor)
        assert draft is not None
        redacted = len(draft.redactions)
        self._cache.last_memory.pop(uid, None)
        self._semantic.users_changed([uid])
        cancelled = await wait_for_commit(self._semantic.forget([m.id for m in memories])) or cancelled
        audit.info(
            "erasure: %s of user %s (%d memories, %d stored states redacted) at the request of %s",
            request,
            uid,
            len(memories),
            redacted,
            actor,
        )
        return cancelled, draft.new is not None

    async def _after_erasure(self, cancelled: bool, *, snapshot: bool = False) -> None:
        """Outside the user lock: purge the deleted rows from the files, and rewrite the snapshot
        when it quoted what was forgotten; then the caller's own cancellation, if any. The
        ranker's cached analyses of memory texts go too (they hold the forgotten words)."""
        forget_cached_texts()
        cancelled = await wait_for_commit(self._store.purge_erased()) or cancelled
        if snapshot and self._saver is not None:
            cancelled = await wait_for_commit(self._saver.flush()) or cancelled
        if cancelled:
            raise asyncio.CancelledError

    async def forget_scope(self, scope: str, *, user_id: str | int | None = None, actor: str = "api") -> int:
        """Forget what was said in ``scope`` (of one user, or of everyone: e.g. a guild the bot
        left): memories and exchanges, everywhere a forget reaches. Returns the memories gone."""
        self._require_running()
        scope = validation.scope(scope)
        only = None if user_id is None else validation.user_id(user_id)
        actor = validation.actor(actor)
        users = {m.user_id for m in await self._store.memories_in_scope(scope, only)}
        users.update(
            uid
            for uid, ctx in self._cache.contexts.items()
            if (only is None or uid == only) and any(e.visible_scope == scope for e in ctx.recent)
        )
        forgotten = 0
        cancelled = changed = False
        for uid in sorted(users):
            async with self._locks.hold(uid):
                mine = await self._store.memories_in_scope(scope, uid)
                target = ErasureTarget.of(mine, scopes=(scope,))
                was_cancelled, was_changed = await self._erase(uid, mine, (), "forget_scope", actor, target)
            cancelled, changed = cancelled or was_cancelled, changed or was_changed
            forgotten += len(mine)
        if users:
            await self._after_erasure(cancelled, snapshot=changed)
        return forgotten

    async def prune_before(self, cutoff: datetime, *, actor: str = "retention") -> int:
        """Retention: forget every exchange made before ``cutoff`` (memories and recent
        exchanges, as a forget does), and drop the history states stored before it (the
        current state always stays). Notes and facts are kept. Returns the memories gone."""
        self._require_running()
        cutoff = validation.timestamp("cutoff", cutoff, datetime.now(UTC))
        actor = validation.actor(actor)
        old = await self._store.memories_before(cutoff, ("exchange",))
        users = {m.user_id for m in old}
        users.update(await self._store.users_with_history_before(cutoff))
        contexts = self._cache.contexts.items()
        users.update(uid for uid, ctx in contexts if any(e.at < cutoff for e in ctx.recent))
        pruned = 0
        cancelled = changed = False
        for uid in sorted(users):
            async with self._locks.hold(uid):
                mine = await self._store.memories_before(cutoff, ("exchange",), uid)
                target = ErasureTarget.of(mine, before=cutoff)
                was_cancelled, was_changed = await self._erase(
                    uid, mine, (), "retention", actor, target, compact_before=cutoff
                )
            cancelled, changed = cancelled or was_cancelled, changed or was_changed
            pruned += len(mine)
        if users:
            await self._after_erasure(cancelled, snapshot=changed)
        return pruned

    async def edit_source(self, source_id: str, message: str, *, actor: str = "api") -> list[Memory]:
        """A message said again in other words (e.g. an edited Discord message): the memories
        made from it and the exchanges quoting it take the new text everywhere the old one was
        (rows, terms, embedding, recent exchanges, stored history states, the snapshot), and
        the old text is purged from the files as by a forget. Returns the memories as edited.

        An exchange memory keeps its name and reply and gets the new message; any other memory
        (a note) becomes ``message``.
        """
        self._require_running()
        source = validation.source_id(source_id)
        if source is None:
            raise InvalidInputError("source_id", "must not be empty")
        message = validation.text("message", message, self.settings.limits.max_text_length, allow_empty=False)
        actor = validation.actor(actor)
        users = await self._source_users(source, scan_contexts=True)
        edited: list[Memory] = []
        cancelled = changed = False
        for uid in sorted(users):
            async with self._locks.hold(uid):
                mine = [m for m in await self._store.memories_by_source(source) if m.user_id == uid]
                was_cancelled, was_changed, done = await self._edit(uid, mine, source, message, actor)
            cancelled, changed = cancelled or was_cancelled, changed or was_changed
            edited += done
        if users:
            await self._after_erasure(cancelled, snapshot=changed)
        return edited

    async def _edit(
        self, uid: str, memories: list[Memory], source: str, message: str, actor: str
    ) -> tuple[bool, bool, list[Memory]]:
        """Under the user's lock: rewrite ``memories`` and the exchanges quoting them, one unit."""
        target = ErasureTarget.of(memories, (source,))
        done: list[Memory] = []

        async def build(current: UserContext) -> Draft:
            old = self._cache.get(uid)
            quoted = {e.memory_id: e for e in old.recent if e.memory_id is not None} if old else {}
            edited = [
                dataclasses.replace(
                    m,
                    text=edited_exchange_text(m.text, message, quoted.get(m.id))
                    if m.kind == "exchange"
                    else message,
                )
                for m in memories
            ]
            edited = [m for m, old_m in zip(edited, memories, strict=True) if m.text != old_m.text]
            done[:] = edited
            links = await self._store.session_neighbours([m.id for m in edited])
            rows = await self._store.memories_by_id(
                sorted({n for pair in links.values() for n in pair if n is not None})
            )
            edits: list[MemoryEdit] = []
            for memory in edited:
                prev_id, next_id = links.get(memory.id, (None, None))
                previous = rows.get(prev_id) if prev_id is not None else None
                body, _ = lexical_document(memory, previous)
                following = rows.get(next_id) if next_id is not None else None
                after = () if following is None else ((following.id, lexical_document(following, memory)[1]),)
                edits.append(MemoryEdit(memory, body, after))
            redactions = redacted_states(await self._store.history_since(uid, None), target, message)
            new = change = None
            rewritten = edited_exchanges(old, target, message) if old is not None else None
            if old is not None and rewritten is not None:
                new = old.copy_with(recent=rewritten, version=old.version + 1)
                change = {"op": "edit", "memories": len(edited)}
            return Draft(new, change, edits=tuple(edits), redactions=tuple(redactions))

        # An embedding of the old text still in flight is dropped whenever it lands.
        with self._semantic.rewriting(memories) as replaced:
            draft, cancelled = await self._change_anyway(uid, build, actor)
            assert draft is not None
            edited = done
            self._cache.last_memory.pop(uid, None)
            ids = [m.id for m in edited]
            replaced.update(ids)
            self._semantic.users_changed([uid])
            cancelled = await wait_for_commit(self._semantic.forget(ids)) or cancelled
            self._semantic.committed(edited)  # embedded again from the new text
        return cancelled, draft.new is not None, edited

    async def erasures(self, user_id: str | int | None = None) -> list[ErasureRecord]:
        """The erasure log (every forget: who, when, what kind, how many rows; no content)."""
        self._require_running()
        return await self._store.erasures(None if user_id is None else validation.user_id(user_id))
