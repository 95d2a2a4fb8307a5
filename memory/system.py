"""MemorySystem: the lifecycle and every public operation.

Reads come from the in-memory map of frozen contexts (no I/O, no copy). A change takes the
user's lock, builds the new context, commits it through the group-commit writer, and only then
installs it; a caller cancelled mid-commit still leaves the change applied completely.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiofiles.os
import orjson

from memory import validation
from memory.autosave import AutoSaver
from memory.context import MAX_FRIENDSHIP, Exchange, FrozenMap, UserContext, freeze_json, parse_time
from memory.errors import (
    BackgroundTaskError,
    InvalidInputError,
    MemoryNotFoundError,
    SystemClosedError,
    UserNotFoundError,
    VersionNotFoundError,
)
from memory.group_commit import Statement
from memory.locks import UserLocks
from memory.ownership import FolderOwnership
from memory.records import HistoryEntry, Memory, ScoredMemory
from memory.recovery import (
    DB_NAME,
    INDEX_NAME,
    SNAPSHOT_NAME,
    StartupReport,
    check_snapshot,
    open_store,
)
from memory.retrieval import lexical_document, same_session
from memory.semantic import SemanticMemory
from memory.settings import Settings, load_settings
from memory.store import (
    SqliteStore,
    context_statements,
    forget_memory_statements,
    forget_user_statements,
    memory_statements,
)
from memory.supervisor import Faults, Supervisor, SystemState

log = logging.getLogger(__name__)
MAX_FRESH_CONTEXTS = 10_000
MAX_CACHED_LAST_MEMORIES = 100_000
MEMORY_KINDS = frozenset({"exchange", "fact", "note"})
EXPORT_FORMAT = "memory-bot-user-export/1"
# How long close() lets changes in flight finish before it closes the parts under them.
CLOSE_GRACE_SECONDS = 30.0


async def wait_for_commit(commit: asyncio.Future[None]) -> bool:
    """Wait for a commit even through cancellation; True if the caller was cancelled meanwhile."""
    cancelled = False
    while True:
        try:
            await asyncio.shield(commit)
        except asyncio.CancelledError:
            cancelled = True
            if not commit.done():
                continue
            commit.result()  # raises the commit's own error, if it failed
        return cancelled


class MemorySystem:
    """Durable per-user memory. ``async with MemorySystem(data_dir=...) as ms:`` starts and closes it."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        settings: Settings | None = None,
        config_file: str | Path | None = None,
        encoder: Any = None,
        take_ownership: bool = True,
        faults: Faults | None = None,
    ) -> None:
        """``faults`` is a test hook (see ``memory.Faults``); leave it None outside tests."""
        self._take_ownership = take_ownership
        self._given_settings = settings
        self._config_file = config_file
        self._given_data_dir = data_dir
        self._encoder = encoder
        self._state = SystemState.NEW
        self._supervisor = Supervisor(faults, on_death=self._task_died)
        self._contexts: dict[str, UserContext] = {}
        self._encoded: dict[str, bytes] = {}
        self._fresh: dict[str, UserContext] = {}
        self._locks = UserLocks()
        self._next_memory_id = 1
        self._last_memory: dict[str, Memory | None] = {}
        self.settings = settings or Settings()
        self.report: StartupReport | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def state(self) -> SystemState:
        return self._state

    async def start(self) -> StartupReport:
        if self._state is not SystemState.NEW:
            raise SystemClosedError(f"this MemorySystem is {self._state}; make a new one to start again")
        self._state = SystemState.STARTING
        try:
            return await self._start()
        except BaseException:
            try:
                await self._shutdown(save=False)
            except Exception as cleanup:  # noqa: BLE001 - the start error is the one to raise
                log.error("cleaning up after a failed start also failed: %s", cleanup)
            raise

    def _task_died(self, error: BackgroundTaskError) -> None:
        if self._state in (SystemState.STARTING, SystemState.RUNNING):
            self._state = SystemState.FAILED

    async def _start(self) -> StartupReport:
        if self._given_settings is None:
            self.settings = load_settings(self._config_file)
        data_dir = Path(self._given_data_dir or self.settings.storage.data_dir)
        self.data_dir = data_dir
        await aiofiles.os.makedirs(data_dir, exist_ok=True)
        if self._take_ownership:
            self._ownership = FolderOwnership(data_dir)
            self._ownership.acquire()
        else:
            log.warning("opening %s without taking ownership: another process may be writing", data_dir)
        storage = self.settings.storage
        self._store = SqliteStore(
            data_dir / DB_NAME,
            synchronous=storage.synchronous,
            busy_timeout_ms=storage.busy_timeout_ms,
            max_batch=storage.max_batch,
            supervisor=self._supervisor,
        )
        snapshot = data_dir / SNAPSHOT_NAME
        report = StartupReport(data_dir=str(data_dir))
        await open_store(self._store, snapshot, report, check=storage.integrity_check_on_start)
        for user_id, data in await self._store.load_contexts():
            self._contexts[user_id] = UserContext.from_dict(orjson.loads(data))
            self._encoded[user_id] = data.encode()
        report.users = len(self._contexts)
        self._next_memory_id = await self._store.next_memory_id()
        self._saver = AutoSaver(snapshot, storage.save_interval, self._snapshot_source, self._supervisor)
        if check_snapshot(snapshot, report):
            self._saver.mark_dirty()
        self._semantic = SemanticMemory(
            self.settings, self._store, data_dir / INDEX_NAME, self._encoder, self._supervisor
        )
        await self._semantic.start(report)
        self._saver.start()
        death = self._supervisor.first_death()
        if death is not None:
            raise death
        self._state = SystemState.RUNNING
        self.report = report
        log.info("memory system started: %s", report.to_dict())
        return report

    async def close(self) -> None:
        """Let changes in flight finish, write the final snapshot, release every thread and file.

        New calls are refused from the first moment. Every part is closed even when one fails (a
        full disk fails the final saves); the first error, or the death of a background task, is
        raised once everything is released. Safe to call twice.
        """
        if self._state in (SystemState.CLOSED, SystemState.CLOSING, SystemState.NEW):
            if self._state is SystemState.NEW:
                self._state = SystemState.CLOSED
            return
        self._state = SystemState.CLOSING
        try:
            async with asyncio.timeout(CLOSE_GRACE_SECONDS):
                await self._locks.wait_idle()
        except TimeoutError:
            log.warning(
                "changes still in flight after %.0f s are cut off by close()", CLOSE_GRACE_SECONDS
            )
        await self._shutdown(save=True)
        death = self._supervisor.first_death()
        if death is not None:
            raise death.with_traceback(None)

    async def _shutdown(self, *, save: bool) -> None:
        """Close each part in its own try, in order; raise the first error after the last part."""
        saver = getattr(self, "_saver", None)
        steps: list[tuple[str, Callable[[], Any]]] = []
        if (semantic := getattr(self, "_semantic", None)) is not None:
            steps.append(("the index and encoder", semantic.close))
        if saver is not None and save:
            steps.append(("the final snapshot", saver.close))
        if (store := getattr(self, "_store", None)) is not None:
            steps.append(("the database", store.close))
        errors: list[Exception] = []
        try:
            for part, close in steps:
                try:
                    await close()
                except Exception as exc:  # noqa: BLE001 - every part must close; raised below
                    if errors:
                        log.error("closing %s also failed: %s", part, exc)
                    errors.append(exc)
        finally:
            ownership = getattr(self, "_ownership", None)
            if ownership is not None:
                ownership.release()
            self._state = SystemState.CLOSED
        if errors:
            raise errors[0]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _require_running(self) -> None:
        if self._state is SystemState.RUNNING:
            return
        death = self._supervisor.first_death()
        if self._state is SystemState.FAILED and death is not None:
            raise death.with_traceback(None)
        hint = "call await start() first" if self._state is SystemState.NEW else "make a new MemorySystem"
        raise SystemClosedError(f"the memory system is {self._state}; {hint}")

    def _snapshot_source(self) -> tuple[list[bytes], int]:
        parts = list(self._encoded.values())
        return parts, len(parts)

    # -- contexts ----------------------------------------------------------------------------

    async def get_user_context(self, user_id: str | int) -> UserContext:
        """The current context; a new user gets a fresh one (stored at its first change)."""
        self._require_running()
        uid = validation.user_id(user_id)
        ctx = self._contexts.get(uid)
        if ctx is None:
            ctx = self._fresh.get(uid)
            if ctx is None:
                if len(self._fresh) >= MAX_FRESH_CONTEXTS:
                    self._fresh.clear()
                ctx = self._fresh[uid] = UserContext.new(uid, datetime.now(UTC))
        return ctx

    def _current(self, uid: str, now: datetime) -> UserContext:
        return self._contexts.get(uid) or self._fresh.get(uid) or UserContext.new(uid, now)

    async def update_context(
        self,
        user_id: str | int,
        message: str,
        response: str,
        *,
        display_name: str | None = None,
        source_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        actor: str = "api",
    ) -> UserContext:
        """Count one conversation, raise friendship, keep the exchange (and store it as a memory)."""
        self._require_running()
        uid = validation.user_id(user_id)
        limits = self.settings.limits
        message = validation.text("message", message, limits.max_text_length)
        response = validation.text("response", response, limits.max_text_length)
        if display_name is not None:
            display_name = validation.text("display_name", display_name, 100)
        meta = _metadata(metadata)
        source = _source_id(source_id)
        async with self._locks.hold(uid):
            now = datetime.now(UTC)
            old = self._current(uid, now)
            recent = (*old.recent, Exchange(message, response, now))
            new = old.copy_with(
                display_name=old.display_name if display_name is None else display_name,
                conversations_count=old.conversations_count + 1,
                friendship_level=min(MAX_FRIENDSHIP, old.friendship_level + limits.friendship_step),
                recent=recent[-limits.recent_exchanges :] if limits.recent_exchanges else (),
                last_seen=now,
                version=old.version + 1,
            )
            change = {
                "op": "update_context",
                "conversations_count": [old.conversations_count, new.conversations_count],
                "friendship_level": [old.friendship_level, new.friendship_level],
            }
            memories: list[Memory] = []
            if self.settings.retrieval.store_exchanges:
                # The exchange memory's text: "<name>: <message>\nBot: <response>".
                text = f"{new.display_name or uid}: {message}\nBot: {response}"
                memories.append(self._new_memory(uid, text, "exchange", now, meta, source))
            await self._commit(new, now, actor, change, memories)
        return new

    async def set_preference(
        self, user_id: str | int, key: str, value: Any, *, actor: str = "api"
    ) -> UserContext:
        """Set one preference; ``None`` removes it."""
        self._require_running()
        uid = validation.user_id(user_id)
        key = validation.text("preference key", key, 64, allow_empty=False)
        async with self._locks.hold(uid):
            now = datetime.now(UTC)
            old = self._current(uid, now)
            prefs = dict(old.preferences)
            previous = prefs.get(key)
            if value is None:
                prefs.pop(key, None)
            else:
                prefs[key] = value
            if len(prefs) > self.settings.limits.max_preferences:
                raise InvalidInputError(
                    "preferences", f"at most {self.settings.limits.max_preferences} per user"
                )
            new = old.copy_with(preferences=FrozenMap(prefs), version=old.version + 1)
            change = {"op": "set_preference", "key": key, "from": previous, "to": value}
            await self._commit(new, now, actor, change, [])
        return new

    async def set_display_name(self, user_id: str | int, name: str, *, actor: str = "api") -> UserContext:
        self._require_running()
        uid = validation.user_id(user_id)
        name = validation.text("display_name", name, 100, allow_empty=False)
        async with self._locks.hold(uid):
            now = datetime.now(UTC)
            old = self._current(uid, now)
            new = old.copy_with(display_name=name, version=old.version + 1)
            change = {"op": "set_display_name", "from": old.display_name, "to": name}
            await self._commit(new, now, actor, change, [])
        return new

    async def history(self, user_id: str | int) -> list[HistoryEntry]:
        """Every version of the user's context, oldest first."""
        self._require_running()
        uid = validation.user_id(user_id)
        entries = await self._store.history(uid)
        if not entries and uid not in self._contexts:
            raise UserNotFoundError(uid)
        return entries

    async def rollback(self, user_id: str | int, version: int, *, actor: str = "api") -> UserContext:
        """A new version equal to ``version``; history itself is never rewritten."""
        self._require_running()
        uid = validation.user_id(user_id)
        version = validation.positive_int("version", version)
        async with self._locks.hold(uid):
            current = self._contexts.get(uid)
            if current is None:
                raise UserNotFoundError(uid)
            entry = await self._store.history_entry(uid, version)
            if entry is None:
                raise VersionNotFoundError(uid, version, current.version)
            now = datetime.now(UTC)
            new = entry.context.copy_with(version=current.version + 1)
            change = {"op": "rollback", "from_version": current.version, "to_version": version}
            await self._commit(new, now, actor, change, [])
        return new

    async def list_users(self) -> list[str]:
        self._require_running()
        return sorted(self._contexts)

    async def _commit(
        self,
        new: UserContext,
        now: datetime,
        actor: str,
        change: dict[str, Any],
        memories: list[Memory],
    ) -> None:
        """Commit under the caller's user lock; install the new state only once durable."""
        encoded = new.to_json()
        statements = context_statements(new, encoded.decode(), now, actor, change)
        statements += await self._memory_statements(memories)
        cancelled = await self._commit_unit(statements, memories)
        self._contexts[new.user_id] = new
        self._encoded[new.user_id] = encoded
        self._fresh.pop(new.user_id, None)
        self._saver.mark_dirty()
        if cancelled:
            raise asyncio.CancelledError

    async def _memory_statements(self, memories: list[Memory]) -> list[Statement]:
        """Rows for new memories, each linked to the previous one when in the same session."""
        statements: list[Statement] = []
        gap = self.settings.retrieval.session_gap_minutes
        for memory in memories:
            uid = memory.user_id
            if uid not in self._last_memory:
                if len(self._last_memory) >= MAX_CACHED_LAST_MEMORIES:
                    self._last_memory.clear()
                self._last_memory[uid] = await self._store.last_memory(uid)
            previous = self._last_memory[uid]
            linked = previous if same_session(previous, memory, gap) else None
            body, context = lexical_document(memory, linked)
            statements += memory_statements(memory, body, context, linked.id if linked else None)
            self._last_memory[uid] = memory
        return statements

    async def _commit_unit(self, statements: list[Statement], memories: list[Memory]) -> bool:
        """Commit one unit; True if the caller was cancelled meanwhile (it applied all the same)."""
        try:
            cancelled = await wait_for_commit(self._store.submit(statements))
        except BaseException:
            for memory in memories:  # not committed: the cached "last memory" may be wrong
                self._last_memory.pop(memory.user_id, None)
            raise
        if memories:
            self._semantic.committed(memories)
        return cancelled

    # -- memories ----------------------------------------------------------------------------

    def _new_memory(
        self,
        uid: str,
        text: str,
        kind: str,
        created_at: datetime,
        metadata: FrozenMap,
        source_id: str | None,
    ) -> Memory:
        memory_id = self._next_memory_id
        self._next_memory_id += 1
        return Memory(memory_id, uid, text, kind, created_at, metadata, source_id)

    async def save_memory(
        self,
        user_id: str | int,
        text: str,
        *,
        kind: str = "note",
        metadata: Mapping[str, Any] | None = None,
        created_at: datetime | None = None,
        source_id: str | None = None,
    ) -> Memory:
        """Store one memory; committed before this returns, embedded just after."""
        self._require_running()
        uid = validation.user_id(user_id)
        text = validation.text("text", text, self.settings.limits.max_text_length, allow_empty=False)
        if kind not in MEMORY_KINDS:
            raise InvalidInputError("kind", f"must be one of {sorted(MEMORY_KINDS)}, got {kind!r}")
        meta = _metadata(metadata)
        source = _source_id(source_id)
        if created_at is not None and (not isinstance(created_at, datetime) or created_at.tzinfo is None):
            raise InvalidInputError("created_at", "must be a timezone-aware datetime")
        when = created_at.astimezone(UTC) if created_at is not None else datetime.now(UTC)
        async with self._locks.hold(uid):
            memory = self._new_memory(uid, text, kind, when, meta, source)
            await self._commit_memories([memory])
        return memory

    async def _commit_memories(self, memories: list[Memory]) -> None:
        if await self._commit_unit(await self._memory_statements(memories), memories):
            raise asyncio.CancelledError

    async def get_memories(
        self,
        user_id: str | int,
        *,
        limit: int | None = None,
        offset: int = 0,
        kinds: Iterable[str] | None = None,
    ) -> list[Memory]:
        """The user's memories, oldest first."""
        self._require_running()
        uid = validation.user_id(user_id)
        if limit is not None:
            limit = validation.positive_int("limit", limit)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidInputError("offset", "must be a whole number >= 0")
        return await self._store.memories(
            uid, limit=-1 if limit is None else limit, offset=offset, kinds=kinds
        )

    async def count_memories(self, user_id: str | int) -> int:
        self._require_running()
        return await self._store.count_memories(validation.user_id(user_id))

    async def forget_memory(self, user_id: str | int, memory_id: int) -> Memory:
        """Remove one of the user's memories everywhere; another user's id is 'not found'."""
        self._require_running()
        uid = validation.user_id(user_id)
        memory_id = validation.positive_int("memory_id", memory_id)
        async with self._locks.hold(uid):
            found = (await self._store.memories_by_id([memory_id])).get(memory_id)
            if found is None or found.user_id != uid:
                raise MemoryNotFoundError(uid, memory_id)
            cancelled = await wait_for_commit(self._store.submit(forget_memory_statements(memory_id)))
            self._last_memory.pop(uid, None)
            await self._semantic.forget([memory_id])
            if cancelled:
                raise asyncio.CancelledError
        return found

    async def forget_source(self, source_id: str) -> list[Memory]:
        """Forget the memories made from one source (e.g. a deleted Discord message)."""
        self._require_running()
        source = _source_id(source_id)
        if source is None:
            raise InvalidInputError("source_id", "must not be empty")
        rows = await self._store.memories_by_source(source)
        forgotten = []
        for memory in rows:
            try:
                forgotten.append(await self.forget_memory(memory.user_id, memory.id))
            except MemoryNotFoundError:
                continue  # forgotten meanwhile by another call: the outcome is the same
        return forgotten

    async def forget_user(self, user_id: str | int, *, actor: str = "api") -> bool:
        """Remove everything of the user: context, history, memories, vectors, snapshot entry."""
        self._require_running()
        uid = validation.user_id(user_id)
        async with self._locks.hold(uid):
            ids = await self._store.memory_ids(uid)
            known = uid in self._contexts or bool(ids)
            cancelled = await wait_for_commit(self._store.submit(forget_user_statements(uid)))
            self._contexts.pop(uid, None)
            self._encoded.pop(uid, None)
            self._fresh.pop(uid, None)
            self._last_memory.pop(uid, None)
            self._saver.mark_dirty()
            await self._semantic.forget(ids)
            log.info("forgot user %s (%d memories) at the request of %s", uid, len(ids), actor)
            if cancelled:
                raise asyncio.CancelledError
        return known

    async def retrieve_memory(
        self, user_id: str | int, query: str, k: int = 5, *, kinds: Iterable[str] | None = None
    ) -> list[ScoredMemory]:
        """The user's memories most relevant to ``query``, best first; never another user's."""
        self._require_running()
        uid = validation.user_id(user_id)
        query = validation.text("query", query, self.settings.limits.max_text_length, allow_empty=False)
        k = validation.positive_int("k", k)
        if k > self.settings.retrieval.max_k:
            raise InvalidInputError("k", f"must be at most {self.settings.retrieval.max_k} (retrieval.max_k)")
        kind_set = None if kinds is None else frozenset(kinds)
        if kind_set is not None and not kind_set <= MEMORY_KINDS:
            raise InvalidInputError("kinds", f"must be among {sorted(MEMORY_KINDS)}")
        return await self._semantic.retrieve(uid, query, k, kind_set)

    async def rebuild_index(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Rebuild the FAISS index from the embeddings in SQLite; returns the vectors indexed."""
        self._require_running()
        return await self._semantic.rebuild(progress)

    async def export_user(self, user_id: str | int) -> dict[str, Any]:
        """Everything stored about one user, as JSON-safe data (``import_user`` takes it back)."""
        self._require_running()
        uid = validation.user_id(user_id)
        async with self._locks.hold(uid):
            context = self._contexts.get(uid)
            history = await self._store.history(uid)
            memories = await self._store.memories(uid)
        if context is None and not memories:
            raise UserNotFoundError(uid)
        return {
            "format": EXPORT_FORMAT,
            "user_id": uid,
            "exported_at": datetime.now(UTC).isoformat(),
            "context": context.to_dict() if context else None,
            "history": [entry.to_dict() for entry in history],
            "memories": [memory.to_dict() for memory in memories],
        }

    async def import_user(self, data: Mapping[str, Any], *, actor: str = "import") -> UserContext | None:
        """Load an export: the context becomes a new version; memories are added (new ids)."""
        self._require_running()
        if not isinstance(data, Mapping) or data.get("format") != EXPORT_FORMAT:
            raise InvalidInputError("import", f"is not a memory-bot export (format {EXPORT_FORMAT!r})")
        uid = validation.user_id(data.get("user_id"))
        raw_memories = data.get("memories") or []
        if not isinstance(raw_memories, list):
            raise InvalidInputError("import.memories", "must be a list")
        new_ctx: UserContext | None = None
        async with self._locks.hold(uid):
            now = datetime.now(UTC)
            memories = []
            for raw in raw_memories:
                if not isinstance(raw, Mapping):
                    raise InvalidInputError("import.memories", "each memory must be an object")
                text = validation.text(
                    "memory text",
                    raw.get("text"),
                    self.settings.limits.max_text_length,
                    allow_empty=False,
                )
                kind = raw.get("kind", "note")
                if kind not in MEMORY_KINDS:
                    raise InvalidInputError("memory kind", f"must be one of {sorted(MEMORY_KINDS)}")
                created = parse_time("created_at", raw.get("created_at", now.isoformat()))
                memories.append(
                    self._new_memory(
                        uid,
                        text,
                        kind,
                        created,
                        _metadata(raw.get("metadata")),
                        _source_id(raw.get("source_id")),
                    )
                )
            if data.get("context") is not None:
                imported = UserContext.from_dict(data["context"])
                if imported.user_id != uid:
                    raise InvalidInputError("import.context", "belongs to another user id")
                current = self._contexts.get(uid)
                new_ctx = imported.copy_with(version=(current.version if current else 0) + 1)
                await self._commit(new_ctx, now, actor, {"op": "import", "memories": len(memories)}, memories)
            else:
                await self._commit_memories(memories)
        return new_ctx

    # -- inspection --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The lifecycle state and each background task's (running, stopped, or why it died)."""
        return {"state": str(self._state), "tasks": self._supervisor.health()}

    async def stats(self) -> dict[str, Any]:
        """Counters of every part; also while FAILED, to show which task died and why."""
        if self._state is not SystemState.FAILED:
            self._require_running()
        return {
            **self.health(),
            "users": len(self._contexts),
            "memories": await self._store.count("memories"),
            "history_rows": await self._store.count("context_history"),
            **self._saver.stats(),
            **self._store.writer_stats(),
            **self._locks.stats(),
            **await self._semantic.stats(),
            "startup": self.report.to_dict() if self.report else None,
        }


def _metadata(metadata: Mapping[str, Any] | None) -> FrozenMap:
    if metadata is None:
        return FrozenMap()
    if not isinstance(metadata, Mapping):
        raise InvalidInputError("metadata", f"must be a JSON object, got {type(metadata).__name__}")
    try:
        encoded = orjson.dumps(metadata)
    except TypeError as exc:
        raise InvalidInputError("metadata", f"must be JSON-serialisable: {exc}") from exc
    if len(encoded) > 16_384:
        raise InvalidInputError("metadata", "must be at most 16 KiB as JSON")
    frozen: FrozenMap = freeze_json(orjson.loads(encoded))
    return frozen


def _source_id(source_id: str | int | None) -> str | None:
    if source_id is None:
        return None
    if isinstance(source_id, int) and not isinstance(source_id, bool):
        return str(source_id)
    return validation.text("source_id", source_id, 200, allow_empty=False)
