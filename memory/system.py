"""MemorySystem: the lifecycle and every public operation.

Reads come from the in-memory map of frozen contexts (no I/O, no copy). A change takes the
user's lock, builds the new context, commits it through the group-commit writer, and only then
installs it; a caller cancelled mid-commit still leaves the change applied completely.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiofiles.os

from memory import validation
from memory.autosave import AutoSaver
from memory.changes import ChangeRunner, ContextCache, Draft
from memory.context import (
    MAX_FRIENDSHIP,
    PRIVATE_SCOPE,
    Exchange,
    FrozenMap,
    UserContext,
    freeze_json,
    stored_context,
)
from memory.control import ControlServer
from memory.encoder import HashingEncoder
from memory.erasure import (
    exchange_text,
)
from memory.errors import (
    BackgroundTaskError,
    ConfigError,
    InvalidInputError,
    StorageError,
    SystemClosedError,
    UserNotFoundError,
    VersionNotFoundError,
)
from memory.forgetting import Forgetting
from memory.locks import UserLocks
from memory.ownership import FolderOwnership
from memory.records import HistoryEntry, Memory, ScoredMemory
from memory.recovery import (
    DB_NAME,
    INDEX_NAME,
    SNAPSHOT_NAME,
    StartupReport,
    check_snapshot,
    load_contexts,
    open_store,
)
from memory.semantic import SemanticMemory
from memory.settings import Settings, load_settings
from memory.storage.protocol import Store
from memory.storage.sqlite import SqliteStore
from memory.supervisor import Faults, Supervisor, SystemState, TaskName
from memory.transfer import ImportDocument, export_document, read_import, with_memory_ids

log = logging.getLogger(__name__)
PreferenceChanges = Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any]]
# How long close() lets changes in flight finish before it closes the parts under them.
CLOSE_GRACE_SECONDS = 30.0
MINILM_DIM = 384  # all-MiniLM-L6-v2, the default model
MAX_WAIT_SECONDS = 86_400  # the longest ``wait_ready`` timeout (None waits as long as it takes)
INTEGRITY_CHECK_MAX_DELAY = 60.0  # see ``_check_after``


def _data_dir_error(data_dir: Path, exc: OSError) -> StorageError:
    """Why the data folder cannot be made, naming the path in the way and what to do."""
    blocker = next((p for p in (data_dir, *data_dir.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        problem = f"{blocker} is a file, not a folder; move it aside"
    else:
        problem = f"{exc.strerror or exc}; fix the permissions or create the folder"
    return StorageError(
        f"cannot create the data folder {data_dir}: {problem}, "
        "or choose another one (--data-dir or storage.data_dir)",
        data_dir,
    )


class MemorySystem(Forgetting):
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
        integrity_hold: asyncio.Event | None = None,
    ) -> None:
        """``faults`` and ``integrity_hold`` are test hooks; leave them None outside tests.
        ``faults`` makes background tasks fail (see ``memory.Faults``); the background
        integrity check does not begin until ``integrity_hold`` is set."""
        if integrity_hold is not None and not isinstance(integrity_hold, asyncio.Event):
            raise InvalidInputError("integrity_hold", "must be an asyncio.Event or None")
        self._integrity_hold = integrity_hold
        data_dir = validation.path("data_dir", data_dir)
        settings = validation.settings(settings)
        config_file = validation.path("config_file", config_file)
        self._take_ownership = validation.flag("take_ownership", take_ownership)
        self._given_settings = settings
        self._config_file = config_file
        self._given_data_dir = data_dir
        self._encoder = encoder
        self._state = SystemState.NEW
        self._supervisor = Supervisor(faults, on_death=self._task_died)
        self._locks = UserLocks()
        self._saver: AutoSaver | None = None
        self._store: Store
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

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for the embedding model (it loads in the background after ``start()``).

        True once it is ready; False if it failed to load (``stats()["encoder_error"]`` says
        why) or ``timeout`` seconds passed. Nothing needs this: until then retrieval is lexical.
        """
        self._require_running()
        number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
        if timeout is not None and not (number and 0 <= timeout <= MAX_WAIT_SECONDS):  # NaN too
            rule = f"must be None or 0 to {MAX_WAIT_SECONDS} seconds, not this {type(timeout).__name__}"
            raise InvalidInputError("timeout", rule)
        return await self._semantic.wait_ready(timeout)

    async def _check_after(self) -> None:
        """The background integrity check starts once the model and the index are ready (at
        100k memories all three loading at once made the first dense retrieve 2-6 s later on
        2 cores), or after ``INTEGRITY_CHECK_MAX_DELAY`` seconds, whichever comes first."""
        await self._semantic.wait_ready(INTEGRITY_CHECK_MAX_DELAY)

    async def integrity_checked(self) -> str:
        """Wait for the integrity check that runs after ``start()`` (SQLite); its state: ok,
        damaged (writes are refused; ``stats()["integrity_problem"]`` says what to do), failed
        (the check could not run), or off (none runs: disabled, blocking, or PostgreSQL)."""
        self._require_running()
        if not isinstance(self._store, SqliteStore):
            return "off"
        return str(await self._store.integrity.wait())

    def _task_died(self, error: BackgroundTaskError) -> None:
        if self._state in (SystemState.STARTING, SystemState.RUNNING):
            self._state = SystemState.FAILED

    async def _start(self) -> StartupReport:
        if self._given_settings is None:
            self.settings = load_settings(self._config_file)
        data_dir = Path(self._given_data_dir or self.settings.storage.data_dir)
        self.data_dir = data_dir
        try:
            await aiofiles.os.makedirs(data_dir, exist_ok=True)
        except OSError as exc:
            raise _data_dir_error(data_dir, exc) from exc
        storage = self.settings.storage
        if storage.backend == "postgres":
            return await self._start_shared(data_dir)
        if self._take_ownership:
            self._ownership = FolderOwnership(data_dir)
            self._ownership.acquire()
        else:
            log.warning("opening %s without taking ownership: another process may be writing", data_dir)
        self._store = SqliteStore(
            data_dir / DB_NAME,
            synchronous=storage.synchronous,
            busy_timeout_ms=storage.busy_timeout_ms,
            max_batch=storage.max_batch,
            supervisor=self._supervisor,
        )
        snapshot = data_dir / SNAPSHOT_NAME
        report = StartupReport(data_dir=str(data_dir))
        blocking = storage.integrity_check_on_start and storage.integrity_check_blocking
        await open_store(self._store, snapshot, report, check=blocking)
        self._cache = ContextCache(self._store)
        self._cache.load(await load_contexts(self._store, snapshot, report))
        report.users = len(self._cache.contexts)
        self._saver = AutoSaver(snapshot, storage.save_interval, self._snapshot_source, self._supervisor)
        if check_snapshot(snapshot, report):
            self._saver.mark_dirty()
        await self._start_semantic(data_dir, report)
        self._saver.start()
        self._running()
        if self._take_ownership:
            self._control = ControlServer(self, data_dir)
            await self._control.start()
        if storage.integrity_check_on_start and not blocking:  # off the start path
            self._store.check_in_background(snapshot, self._integrity_hold, self._check_after)
        return self._started(report)

    async def _start_shared(self, data_dir: Path) -> StartupReport:
        """PostgreSQL: no folder lock, no snapshot, no control socket; the database arbitrates
        between processes (version checks), and its notifications keep this cache coherent."""
        from memory.storage.postgres import PostgresStore  # asyncpg only for this backend

        storage = self.settings.storage
        if not storage.postgres_url:
            raise ConfigError(
                "storage.backend is postgres but storage.postgres_url is empty: start one with "
                "`make postgres` and set MEMORY_BOT_STORAGE_POSTGRES_URL to the URL it prints"
            )
        store = PostgresStore(
            storage.postgres_url,
            max_batch=storage.max_batch,
            supervisor=self._supervisor,
            vector_dim=self._vector_dim(),
        )
        self._store = store
        report = StartupReport(data_dir=store.location)
        report.migrations_applied = await store.open()
        self._cache = ContextCache(store)
        where = Path(store.location)
        self._cache.load(
            [
                (stored_context(data, where, f"the context of user {uid!r}"), data)
                for uid, data in await store.load_contexts()
            ]
        )
        store.listen(self._changed_elsewhere)
        report.users = len(self._cache.contexts)
        await self._start_semantic(data_dir, report)
        self._running()
        return self._started(report)

    def _vector_dim(self) -> int:
        """The size of the vectors the database column holds, known before the model loads."""
        if isinstance(self._encoder, HashingEncoder):
            return self._encoder.dim
        if self.settings.encoder.kind == "hashing":
            return self.settings.encoder.hashing_dim
        return MINILM_DIM

    def _changed_elsewhere(self, user_ids: Sequence[str] | None) -> None:
        """Another process changed ``user_ids`` (None: anything may have changed)."""
        self._cache.mark_stale(user_ids)
        semantic = getattr(self, "_semantic", None)  # notifications begin before it exists
        if semantic is not None:
            semantic.users_changed(user_ids)

    async def _start_semantic(self, data_dir: Path, report: StartupReport) -> None:
        self._semantic = SemanticMemory(
            self.settings, self._store, data_dir / INDEX_NAME, self._encoder, self._supervisor
        )
        self._changes = ChangeRunner(
            self._store, self._cache, self.settings.retrieval.session_gap_minutes, self._semantic.committed
        )
        await self._semantic.start(report)

    def _running(self) -> None:
        death = self._supervisor.first_death()
        if death is not None:
            raise death
        self._state = SystemState.RUNNING

    def _started(self, report: StartupReport) -> StartupReport:
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
            log.warning("changes still in flight after %.0f s are cut off by close()", CLOSE_GRACE_SECONDS)
        await self._shutdown(save=True)
        death = self._supervisor.first_death()
        if death is not None:
            raise death.with_traceback(None)

    async def _shutdown(self, *, save: bool) -> None:
        """Close each part in its own try, in order; raise the first error after the last part."""
        saver = getattr(self, "_saver", None)
        steps: list[tuple[str, Callable[[], Any]]] = []
        if (control := getattr(self, "_control", None)) is not None:
            steps.append(("the control channel", control.close))
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
        parts = list(self._cache.encoded.values())
        return parts, len(parts)

    # -- contexts ----------------------------------------------------------------------------

    async def get_user_context(self, user_id: str | int) -> UserContext:
        """The current context; a new user gets a fresh one (stored at its first change)."""
        self._require_running()
        uid = validation.user_id(user_id)
        await self._cache.fresh(uid)
        return self._cache.current(uid, datetime.now(UTC))

    async def _change(self, uid: str, build: Callable[[UserContext], Any], actor: str) -> Draft | None:
        """Run ``build`` (old context -> Draft) to commitment under the user's lock already held;
        a caller cancelled meanwhile gets its CancelledError once the change has applied."""
        draft, cancelled = await self._change_anyway(uid, build, actor)
        if cancelled:
            raise asyncio.CancelledError
        return draft

    async def _change_anyway(
        self, uid: str, build: Callable[[UserContext], Any], actor: str
    ) -> tuple[Draft | None, bool]:
        """``_change``, returning whether the caller was cancelled instead of raising it: for
        the work that must follow a committed change all the same (an erasure's index)."""

        async def on_current(old: UserContext | None) -> Draft | None:
            draft: Draft | None = await build(old or self._cache.current(uid, datetime.now(UTC)))
            return draft

        draft, cancelled = await self._changes.run(uid, on_current, actor)
        if draft is not None and (draft.new is not None or draft.forget_user) and self._saver is not None:
            self._saver.mark_dirty()
        return draft, cancelled

    async def _new_memory(
        self,
        uid: str,
        text: str,
        kind: str,
        created_at: datetime,
        metadata: FrozenMap,
        source_id: str | None,
        scope: str = PRIVATE_SCOPE,
    ) -> Memory:
        (memory_id,) = await self._changes.memory_ids(1)
        return Memory(memory_id, uid, text, kind, created_at, metadata, source_id, scope)

    async def update_context(
        self,
        user_id: str | int,
        message: str,
        response: str,
        *,
        display_name: str | None = None,
        preferences: PreferenceChanges | None = None,
        source_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        actor: str = "api",
        scope: str = PRIVATE_SCOPE,
    ) -> UserContext:
        """Count one conversation, raise friendship, keep the exchange (and store it as a memory).

        ``scope`` is where it was said (an opaque string, e.g. ``guild:<id>``): the exchange
        and its memory carry it, and a scoped ``retrieve_memory`` sees them only if allowed.

        One chat message is one change: the display name and the preferences learned from it go
        in the same version and commit. ``preferences`` is either the changes to make (a value of
        None removes a key) or a function from the current preferences to those changes, called
        under the user's lock so that two quick messages each build on the other's result.
        """
        self._require_running()
        uid = validation.user_id(user_id)
        limits = self.settings.limits
        message = validation.text("message", message, limits.max_text_length, allow_empty=False)
        response = validation.text("response", response, limits.max_text_length, allow_empty=False)
        if display_name is not None:
            display_name = validation.display_name(display_name)
        if preferences is not None and not (callable(preferences) or isinstance(preferences, Mapping)):
            raise InvalidInputError("preferences", "must be a mapping of changes or a function returning one")
        meta = _metadata(metadata)
        source = validation.source_id(source_id)
        actor = validation.actor(actor)
        scope = validation.scope(scope)

        async def build(old: UserContext) -> Draft:
            now = datetime.now(UTC)
            changes = preferences(old.preferences) if callable(preferences) else preferences
            prefs, pref_change = self._apply_preferences(old.preferences, changes or {})
            memories: list[Memory] = []
            if self.settings.retrieval.store_exchanges:
                # The exchange memory's text: "<name>: <message>\nBot: <response>".
                name = old.display_name if display_name is None else display_name
                text = exchange_text(name or uid, message, response)
                memories.append(await self._new_memory(uid, text, "exchange", now, meta, source, scope))
            memory_id = memories[0].id if memories else None
            exchange = Exchange(message, response, now, memory_id, source, scope)
            recent = (*old.recent, exchange)
            new = old.copy_with(
                display_name=old.display_name if display_name is None else display_name,
                conversations_count=old.conversations_count + 1,
                friendship_level=min(MAX_FRIENDSHIP, old.friendship_level + self._friendship_step(old, now)),
                preferences=prefs,
                recent=recent[-limits.recent_exchanges :] if limits.recent_exchanges else (),
                last_seen=now,
                version=old.version + 1,
            )
            change: dict[str, Any] = {
                "op": "update_context",
                "conversations_count": [old.conversations_count, new.conversations_count],
                "friendship_level": [old.friendship_level, new.friendship_level],
            }
            if pref_change:
                change["preferences"] = pref_change
            if new.display_name != old.display_name:
                change["display_name"] = [old.display_name, new.display_name]
            return Draft(new, change, memories)

        async with self._locks.hold(uid):
            draft = await self._change(uid, build, actor)
        assert draft is not None and draft.new is not None
        return draft.new

    def _friendship_step(self, old: UserContext, now: datetime) -> int:
        """Friendship grows per conversation, not per message: a message less than
        ``retrieval.session_gap_minutes`` after the last one continues the same conversation."""
        gap = timedelta(minutes=self.settings.retrieval.session_gap_minutes)
        new_session = old.conversations_count == 0 or not gap or now - old.last_seen >= gap
        return self.settings.limits.friendship_step if new_session else 0

    def _apply_preferences(
        self, current: FrozenMap, changes: Mapping[str, Any]
    ) -> tuple[FrozenMap, dict[str, list[Any]]]:
        """The preferences after ``changes`` (None removes), and what changed as [from, to]."""
        if not isinstance(changes, Mapping):
            raise InvalidInputError("preferences", "the changes must be a mapping of key to value")
        if not changes:
            return current, {}
        prefs = dict(current)
        changed: dict[str, list[Any]] = {}
        for raw_key, value in changes.items():
            key = validation.text("preference key", raw_key, 64, allow_empty=False)
            previous = prefs.get(key)
            if value is None:
                prefs.pop(key, None)
            else:
                prefs[key] = value
            if previous != prefs.get(key):
                changed[key] = [previous, prefs.get(key)]
        limit = self.settings.limits.max_preferences
        if len(prefs) > max(limit, len(current)):
            raise InvalidInputError("preferences", f"at most {limit} per user (limits.max_preferences)")
        return (FrozenMap(prefs) if changed else current), changed

    async def set_preference(
        self, user_id: str | int, key: str, value: Any, *, actor: str = "api"
    ) -> UserContext:
        """Set one preference; ``None`` removes it."""
        self._require_running()
        uid = validation.user_id(user_id)
        key = validation.text("preference key", key, 64, allow_empty=False)
        actor = validation.actor(actor)

        async def build(old: UserContext) -> Draft:
            previous = old.preferences.get(key)
            prefs, _ = self._apply_preferences(old.preferences, {key: value})
            new = old.copy_with(preferences=prefs, version=old.version + 1)
            return Draft(new, {"op": "set_preference", "key": key, "from": previous, "to": value})

        return await self._context_change(uid, build, actor)

    async def set_display_name(self, user_id: str | int, name: str, *, actor: str = "api") -> UserContext:
        self._require_running()
        uid = validation.user_id(user_id)
        name = validation.display_name(name, allow_empty=False)
        actor = validation.actor(actor)

        async def build(old: UserContext) -> Draft:
            new = old.copy_with(display_name=name, version=old.version + 1)
            return Draft(new, {"op": "set_display_name", "from": old.display_name, "to": name})

        return await self._context_change(uid, build, actor)

    async def _context_change(self, uid: str, build: Callable[[UserContext], Any], actor: str) -> UserContext:
        """``_change`` under the user's lock, for a build that always makes a new context."""
        async with self._locks.hold(uid):
            draft = await self._change(uid, build, actor)
        assert draft is not None and draft.new is not None
        return draft.new

    async def history(self, user_id: str | int) -> list[HistoryEntry]:
        """Every version of the user's context, oldest first."""
        self._require_running()
        uid = validation.user_id(user_id)
        entries = await self._store.history(uid)
        if not entries and self._cache.get(uid) is None:
            raise UserNotFoundError(uid)
        return entries

    async def rollback(self, user_id: str | int, version: int, *, actor: str = "api") -> UserContext:
        """A new version equal to ``version``; history itself is never rewritten."""
        self._require_running()
        uid = validation.user_id(user_id)
        version = validation.positive_int("version", version)
        actor = validation.actor(actor)

        async def build(current: UserContext) -> Draft:
            if self._cache.get(uid) is None:
                raise UserNotFoundError(uid)
            entry = await self._store.history_entry(uid, version)
            if entry is None:
                raise VersionNotFoundError(uid, version, current.version)
            new = entry.context.copy_with(version=current.version + 1)
            return Draft(new, {"op": "rollback", "from_version": current.version, "to_version": version})

        return await self._context_change(uid, build, actor)

    async def list_users(self) -> list[str]:
        self._require_running()
        await self._cache.fresh_all()
        return sorted(self._cache.contexts)

    # -- memories ----------------------------------------------------------------------------

    async def save_memory(
        self,
        user_id: str | int,
        text: str,
        *,
        kind: str = "note",
        metadata: Mapping[str, Any] | None = None,
        created_at: datetime | None = None,
        source_id: str | None = None,
        scope: str = PRIVATE_SCOPE,
    ) -> Memory:
        """Store one memory, said in ``scope``; committed before this returns, embedded just after."""
        self._require_running()
        uid = validation.user_id(user_id)
        text = validation.text("text", text, self.settings.limits.max_text_length, allow_empty=False)
        kind = validation.kind(kind)
        meta = _metadata(metadata)
        source = validation.source_id(source_id)
        scope = validation.scope(scope)
        now = datetime.now(UTC)
        when = now if created_at is None else validation.timestamp("created_at", created_at, now)
        async with self._locks.hold(uid):
            memory = await self._new_memory(uid, text, kind, when, meta, source, scope)

            async def build(old: UserContext) -> Draft:
                return Draft(memories=[memory])

            await self._change(uid, build, "api")
        return memory

    async def get_memories(
        self,
        user_id: str | int,
        *,
        limit: int | None = None,
        offset: int = 0,
        kinds: Iterable[str] | None = None,
        scopes: Iterable[str] | None = None,
    ) -> list[Memory]:
        """The user's memories (said in ``scopes``; None: anywhere), oldest first."""
        self._require_running()
        uid = validation.user_id(user_id)
        if limit is not None:
            limit = validation.positive_int("limit", limit)
        offset = validation.non_negative_int("offset", offset)
        return await self._store.memories(
            uid,
            limit=-1 if limit is None else limit,
            offset=offset,
            kinds=validation.kinds(kinds),
            scopes=validation.scopes(scopes),
        )

    async def memory_scopes(self, user_id: str | int) -> list[str]:
        """Every scope the user has memories in (to build a set of scopes to retrieve from)."""
        self._require_running()
        return await self._store.scopes_of(validation.user_id(user_id))

    async def count_memories(self, user_id: str | int) -> int:
        self._require_running()
        return await self._store.count_memories(validation.user_id(user_id))

    async def retrieve_memory(
        self,
        user_id: str | int,
        query: str,
        k: int = 5,
        *,
        kinds: Iterable[str] | None = None,
        scopes: Iterable[str] | None = None,
    ) -> list[ScoredMemory]:
        """The user's memories most relevant to ``query``, best first; never another user's.

        ``scopes`` is the set of scopes the caller may see (None: all of the person's). The
        filter runs inside both searches, so k results come back when k allowed ones exist.
        """
        self._require_running()
        uid = validation.user_id(user_id)
        query = validation.text("query", query, self.settings.limits.max_text_length, allow_empty=False)
        k = validation.positive_int("k", k)
        if k > self.settings.retrieval.max_k:
            raise InvalidInputError("k", f"must be at most {self.settings.retrieval.max_k} (retrieval.max_k)")
        allowed = validation.scopes(scopes)
        if allowed is not None and not allowed:
            return []
        return await self._semantic.retrieve(uid, query, k, validation.kinds(kinds), allowed)

    async def rebuild_index(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Rebuild the FAISS index from the embeddings in SQLite; returns the vectors indexed."""
        self._require_running()
        return await self._semantic.rebuild(validation.callback("progress", progress))

    async def export_user(self, user_id: str | int) -> dict[str, Any]:
        """Everything stored about one user, as JSON-safe data (``import_user`` takes it back)."""
        self._require_running()
        uid = validation.user_id(user_id)
        async with self._locks.hold(uid):
            await self._cache.fresh(uid)
            context = self._cache.get(uid)
            history = await self._store.history(uid)
            memories = await self._store.memories(uid)
        if context is None and not memories:
            raise UserNotFoundError(uid)
        return export_document(uid, context, history, memories)

    async def import_user(self, data: Mapping[str, Any], *, actor: str = "import") -> UserContext | None:
        """Load an export; importing it again changes nothing.

        Memories the user already has (same kind, time and text: the export's ``key``) are
        skipped, the others added with new ids. The context becomes a new version only when
        it differs from the current one. Returns the user's context, or None when the
        export holds none.
        """
        self._require_running()
        actor = validation.actor(actor)
        document = read_import(data, self.settings.limits, datetime.now(UTC))
        uid = document.user_id

        async def build(fresh: UserContext) -> Draft | None:
            memories, ids = await self._imported_memories(document)
            current = self._cache.get(uid)
            imported = None if document.context is None else with_memory_ids(document.context, ids)
            version = current.version if current else 0
            if imported is not None and imported.copy_with(version=version) != current:
                new = imported.copy_with(version=version + 1)
                return Draft(new, {"op": "import", "memories": len(memories)}, memories)
            return Draft(memories=memories) if memories else None

        async with self._locks.hold(uid):
            draft = await self._change(uid, build, actor)
            if draft is not None and draft.new is not None:
                return draft.new
            current = self._cache.get(uid)
        return current if document.context is not None else None

    async def _imported_memories(self, document: ImportDocument) -> tuple[list[Memory], dict[int, int]]:
        """Under the user lock: new memories for the export's entries the user does not have
        yet, and the id here of each exported memory (export id -> id)."""
        fresh, ids = document.match(await self._store.memories(document.user_id))
        memories = []
        for m in fresh:
            memory = await self._new_memory(
                document.user_id, m.text, m.kind, m.created_at, m.metadata, m.source_id, m.scope
            )
            memories.append(memory)
            if m.exported_id is not None:
                ids[m.exported_id] = memory.id
        return memories, ids

    # -- inspection --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The lifecycle state and each background task's (running, stopped, or why it died)."""
        tasks = self._supervisor.health()
        semantic = getattr(self, "_semantic", None)
        if semantic is not None and str(TaskName.MODEL_LOADER) in tasks:
            tasks[str(TaskName.MODEL_LOADER)] = semantic.loader_health()  # done is not dead
        return {"state": str(self._state), "tasks": tasks}

    async def stats(self) -> dict[str, Any]:
        """Counters of every part; also while FAILED, to show which task died and why."""
        if self._state is not SystemState.FAILED:
            self._require_running()
        return {
            **self.health(),
            "users": len(self._cache.contexts),
            "memories": await self._store.count("memories"),
            "history_rows": await self._store.count("context_history"),
            **(self._saver.stats() if self._saver is not None else {}),
            **self._store.stats(),
            "conflicts": self._changes.conflicts,
            "context_reloads": self._cache.reloads,
            **(await self._store.wal_stats() if isinstance(self._store, SqliteStore) else {}),
            **(self._store.integrity.stats() if isinstance(self._store, SqliteStore) else {}),
            **self._locks.stats(),
            **await self._semantic.stats(),
            "startup": self.report.to_dict() if self.report else None,
        }


def _metadata(metadata: Mapping[str, Any] | None) -> FrozenMap:
    frozen: FrozenMap = freeze_json(validation.metadata(metadata))
    return frozen
