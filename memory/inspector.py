"""A read-only view of one data folder, for the admin CLI's read commands.

SQLite is opened with ``mode=ro`` and no other file is written, so every method here is safe
while a bot owns the folder and none can change its data. Reads that must agree with each other
run in one read transaction (WAL gives it a consistent snapshot of the database). A folder this
process cannot write (a read-only mount or copy) is read as an immutable file when its WAL is
empty (``SqliteStore._open_readonly``), since no writer can be running there.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import orjson

from memory import validation
from memory.context import UserContext, stored_context
from memory.encoder import DeferredEncoder, Encoder, Vectors, build_encoder, encoder_name
from memory.errors import (
    ConfigError,
    IndexCorruptError,
    InvalidInputError,
    StorageError,
    SystemClosedError,
    UserNotFoundError,
    VersionNotFoundError,
)
from memory.index import PerUserIndex, watermark_path
from memory.ownership import LOCK_NAME, holder_pid
from memory.records import ErasureRecord, HistoryEntry, Memory, ScoredMemory
from memory.recovery import DB_NAME, INDEX_NAME, SNAPSHOT_NAME
from memory.retrieval import Retriever
from memory.settings import Settings
from memory.snapshot import read_snapshot
from memory.storage.protocol import Store
from memory.storage.sqlite import SqliteStore
from memory.storage.sqlite_schema import ERASURE_SCHEMA, SCHEMA_VERSION
from memory.transfer import export_document

OK, WARN, FAIL = "ok", "warn", "fail"
_EMBEDDING_CHUNK = 500
_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class UserRow:
    """One line of the user listing."""

    user_id: str
    display_name: str
    conversations: int
    friendship: int
    memories: int
    version: int
    last_seen: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "display_name": self.display_name,
            "conversations": self.conversations,
            "friendship": self.friendship,
            "memories": self.memories,
            "version": self.version,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
        }


# sort name -> (key, descending); ties are always broken by user id, ascending.
USER_SORTS: dict[str, tuple[Callable[[UserRow], Any], bool]] = {
    "id": (lambda r: r.user_id, False),
    "name": (lambda r: r.display_name.casefold(), False),
    "conversations": (lambda r: r.conversations, True),
    "friendship": (lambda r: r.friendship, True),
    "memories": (lambda r: r.memories, True),
    "last-seen": (lambda r: r.last_seen or _NEVER, True),
}


@dataclass(frozen=True, slots=True)
class UserView:
    """What ``show`` prints: the context (None if only memories are stored) and counts."""

    user_id: str
    context: UserContext | None
    versions: int
    memories: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "context": self.context.to_dict() if self.context else None,
            "versions": self.versions,
            "memories": self.memories,
        }


@dataclass(frozen=True, slots=True)
class MemoryPage:
    memories: list[Memory]
    offset: int
    total: int


@dataclass(frozen=True, slots=True)
class Check:
    """One verify check: ``ok``, ``warn`` (expected while an owner runs) or ``fail``."""

    name: str
    status: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


class Inspector:
    """Read-only access to a data folder: ``async with Inspector(folder, settings) as view:``."""

    def __init__(
        self, data_dir: Path, settings: Settings, *, progress: Callable[[str], None] | None = None
    ) -> None:
        """``progress`` gets a short text when the model starts loading and when it is ready."""
        self.data_dir = data_dir
        self.settings = settings
        self._progress = progress
        self.db_path = data_dir / DB_NAME
        self.snapshot_path = data_dir / SNAPSHOT_NAME
        self.index_path = data_dir / INDEX_NAME
        self.lock_path = data_dir / LOCK_NAME
        self._store: Store | None = None
        # PostgreSQL: no files here (no snapshot, no index file); reads in read-only transactions.
        self.shared = settings.storage.backend == "postgres"

    async def open(self) -> None:
        if self.shared:
            from memory.storage.postgres import PostgresStore  # asyncpg only for this backend

            shared = PostgresStore(self.settings.storage.postgres_url, readonly=True)
            await shared.open(integrity_check=False)
            self._store = shared
            return
        if not self.db_path.is_file():
            raise StorageError(
                f"no database at {self.db_path}; check --data-dir (default: storage.data_dir)",
                self.db_path,
            )
        store = SqliteStore(
            self.db_path, readonly=True, busy_timeout_ms=self.settings.storage.busy_timeout_ms
        )
        await store.open(integrity_check=False)
        self._store = store

    async def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            await store.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def store(self) -> Store:
        if self._store is None:
            raise SystemClosedError("the inspector is not open")
        return self._store

    def owner_pid(self) -> int | None:
        """The pid of the process that owns the folder (-1 if unknown), None if nobody does
        (always None on PostgreSQL, which no process owns)."""
        return None if self.shared else holder_pid(self.lock_path)

    @asynccontextmanager
    async def _read_snapshot(self) -> AsyncIterator[None]:
        """One read transaction, so the reads inside it see the same committed state."""
        async with self.store.consistent_reads():
            yield

    # -- users ---------------------------------------------------------------------------------

    async def users(self, sort: str = "id", limit: int | None = None) -> list[UserRow]:
        if sort not in USER_SORTS:
            raise InvalidInputError("sort", f"must be one of {', '.join(USER_SORTS)}")
        async with self._read_snapshot():
            stored = await self.store.load_contexts()
            counts = await self.store.memory_counts()
        contexts = {uid: self._parse_context(uid, data) for uid, data in stored}
        rows = []
        for uid in sorted(contexts.keys() | counts.keys()):
            ctx = contexts.get(uid)
            rows.append(
                UserRow(
                    uid,
                    ctx.display_name if ctx else "",
                    ctx.conversations_count if ctx else 0,
                    ctx.friendship_level if ctx else 0,
                    counts.get(uid, 0),
                    ctx.version if ctx else 0,
                    ctx.last_seen if ctx else None,
                )
            )
        key, descending = USER_SORTS[sort]
        rows.sort(key=key, reverse=descending)  # stable: equal keys keep the id order
        return rows if limit is None else rows[:limit]

    def _parse_context(self, uid: str, data: bytes) -> UserContext:
        return stored_context(data, self.db_path, f"the contexts row of user {uid!r}")

    async def _context(self, uid: str) -> UserContext | None:
        data = await self.store.context_data(uid)
        return None if data is None else self._parse_context(uid, data)

    async def require_user(self, user_id: str | int) -> str:
        """The validated id of a user with a context or memories; else UserNotFoundError."""
        uid = validation.user_id(user_id)
        if await self.store.context_data(uid) is not None or await self.store.count_memories(uid):
            return uid
        raise UserNotFoundError(uid)

    async def show(self, user_id: str | int) -> UserView:
        async with self._read_snapshot():
            uid = await self.require_user(user_id)
            context = await self._context(uid)
            versions = await self.store.version_count(uid)
            memories = await self.store.count_memories(uid)
        return UserView(uid, context, versions, memories)

    async def history(self, user_id: str | int) -> list[HistoryEntry]:
        async with self._read_snapshot():
            uid = await self.require_user(user_id)
            return await self.store.history(uid)

    async def erasures(self, user_id: str | int | None = None) -> list[ErasureRecord]:
        """The erasure log (of one user, or all), oldest first; it has no content to hide."""
        uid = None if user_id is None else validation.user_id(user_id)
        if not self.shared and await self.store.schema_version() < ERASURE_SCHEMA:
            return []  # a database from before the log: nothing was recorded
        return await self.store.erasures(uid)

    async def require_version(self, user_id: str | int, version: int) -> UserView:
        """The user, if its history holds ``version``; else User- or VersionNotFoundError."""
        version = validation.positive_int("version", version)
        shown = await self.show(user_id)
        entry = await self.store.history_entry(shown.user_id, version)
        if entry is None:
            raise VersionNotFoundError(shown.user_id, version, shown.context.version if shown.context else 0)
        return shown

    async def memories(self, user_id: str | int, *, limit: int, offset: int = 0) -> MemoryPage:
        limit = validation.positive_int("limit", limit)
        offset = validation.non_negative_int("offset", offset)
        async with self._read_snapshot():
            uid = await self.require_user(user_id)
            total = await self.store.count_memories(uid)
            page = await self.store.memories(uid, limit=limit, offset=offset)
        return MemoryPage(page, offset, total)

    async def export_user(self, user_id: str | int) -> dict[str, Any]:
        """The same document as ``MemorySystem.export_user``, read without owning the folder."""
        async with self._read_snapshot():
            uid = await self.require_user(user_id)
            context = await self._context(uid)
            history = await self.store.history(uid)
            memories = await self.store.memories(uid)
        return export_document(uid, context, history, memories)

    async def stored_model(self) -> str | None:
        """The embedding model that made the stored embeddings."""
        return await self.store.get_meta("embedding_model")

    async def embedded_count(self) -> int:
        return (await self.store.embedding_watermark())[0]

    # -- search --------------------------------------------------------------------------------

    async def search(
        self, user_id: str | int, query: str, k: int = 5, kinds: Iterable[str] | None = None
    ) -> list[ScoredMemory]:
        """What ``MemorySystem.retrieve_memory`` ranks, computed from the database alone.

        Dense scores come from the user's embeddings in SQLite (the same vectors the running
        owner holds in FAISS), so memories the owner has not saved to the index file yet count.
        """
        cfg = self.settings.retrieval
        query = validation.text("query", query, self.settings.limits.max_text_length, allow_empty=False)
        k = validation.positive_int("k", k)
        if k > cfg.max_k:
            raise InvalidInputError("k", f"must be at most {cfg.max_k} (retrieval.max_k)")
        kind_set = validation.kinds(kinds)
        uid = await self.require_user(user_id)
        index, vector = await self._user_index(uid, query)
        retriever = Retriever(self.store, cfg, _run_inline, self.settings.encoder.model)

        async def embed_query() -> Vectors:
            return vector

        return await retriever.retrieve(index, uid, query, embed_query, k, kind_set)

    async def _user_index(self, uid: str, query: str) -> tuple[PerUserIndex, Vectors]:
        """The user's vectors from SQLite in a private index, and the query's vector."""
        ids = await self.store.memory_ids(uid)
        rows: list[tuple[int, str, bytes]] = []
        for start in range(0, len(ids), _EMBEDDING_CHUNK):
            rows += await self.store.embeddings_for(ids[start : start + _EMBEDDING_CHUNK])
        if not rows:  # nothing embedded yet: no need to load the model
            return PerUserIndex(1, "none"), np.zeros(1, dtype=np.float32)
        model = await self.stored_model()
        started = time.perf_counter()
        if self._progress is not None:
            self._progress("loading the embedding model… ")
        encoder = await open_encoder(self.settings, model)
        if self._progress is not None:
            self._progress(f"ready in {time.perf_counter() - started:.1f} s\n")
        try:
            vector = (await encoder.encode([query]))[0]
        finally:
            await encoder.close()
        index = PerUserIndex(encoder.dim, encoder.name)
        vectors = np.vstack([np.frombuffer(blob, dtype=np.float32) for _, _, blob in rows])
        index.add(uid, [mid for mid, _, _ in rows], vectors)
        return index, vector

    # -- stats ---------------------------------------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        store = self.store
        async with self._read_snapshot():
            memories = await store.count("memories")
            embedded, max_id = await store.embedding_watermark()
            counts = {
                "users": await store.count("contexts"),
                "history_rows": await store.count("context_history"),
                "memories": memories,
                "lexical_rows": (await store.lexical_rows())[0],
                "embedded": embedded,
                "pending_embeddings": memories - embedded,
                "highest_embedded_id": max_id,
            }
            model = await self.stored_model()
            schema = await store.schema_version()
        if self.shared:
            return {
                "database": store.location,
                "owner_pid": None,
                **counts,
                "embedding_model": model,
                "schema_version": schema,
            }
        files = {
            name: _size(self.data_dir / name)
            for name in (
                DB_NAME,
                f"{DB_NAME}-wal",
                f"{DB_NAME}-shm",
                SNAPSHOT_NAME,
                INDEX_NAME,
                watermark_path(self.index_path).name,
                LOCK_NAME,
            )
        }
        return {
            "data_dir": str(self.data_dir),
            "owner_pid": self.owner_pid(),
            **counts,
            "embedding_model": model,
            "schema_version": schema,
            "snapshot": snapshot_info(self.snapshot_path),
            "index": index_info(self.index_path),
            "files": files,
            "total_bytes": sum(size for size in files.values() if size is not None),
        }

    # -- verify --------------------------------------------------------------------------------

    async def verify(self) -> list[Check]:
        """Database integrity, lexical rows, snapshot against database, index watermark."""
        owner = self.owner_pid()
        checks = [
            await _guarded("database", self._check_database),
            await _guarded("lexical", self._check_lexical),
        ]
        if self.shared:
            unused = "not used with PostgreSQL (backups: pg_dump; vectors are searched in the database)"
            return [*checks, Check("snapshot", OK, unused), Check("index", OK, unused)]
        return [
            *checks,
            await _guarded("snapshot", lambda: self._check_snapshot(owner)),
            await _guarded("index", lambda: self._check_index(owner)),
        ]

    async def _check_database(self) -> Check:
        problems = await self.store.integrity_problems()
        where = self.store.location
        if problems != ["ok"]:
            shown = "; ".join(problems[:3])
            return Check(
                "database", FAIL, f"{where}: integrity check found {len(problems)} problem(s): {shown}"
            )
        schema = await self.store.schema_version()
        target = self._schema_target()
        if schema > target:
            return Check("database", FAIL, f"{where}: schema {schema} is newer than this program's {target}")
        status = OK if schema == target else WARN
        note = "" if status == OK else f" (migrated to {target} at the next start)"
        return Check("database", status, f"{where}: integrity check ok, schema {schema}{note}")

    def _schema_target(self) -> int:
        if self.shared:
            from memory.storage.postgres_schema import SCHEMA_VERSION as SHARED_SCHEMA

            return SHARED_SCHEMA
        return SCHEMA_VERSION

    async def _check_lexical(self) -> Check:
        async with self._read_snapshot():
            memories = await self.store.count("memories")
            rows, orphans = await self.store.lexical_rows()
        missing = memories - (rows - orphans)
        if orphans or missing:
            return Check(
                "lexical",
                FAIL,
                f"memories_fts has {orphans} row(s) of deleted memories and lacks {missing}",
            )
        return Check("lexical", OK, f"{rows} memories_fts rows, one per memory")

    async def _check_snapshot(self, owner: int | None) -> Check:
        path = self.snapshot_path
        stored = await self.store.load_contexts()
        db_versions = {uid: self._parse_context(uid, data).version for uid, data in stored}
        if not path.exists():
            if not db_versions:
                return Check("snapshot", OK, f"{path} not written yet; the database has no contexts")
            return Check(
                "snapshot",
                WARN if owner else FAIL,
                f"{path} is missing; it is rewritten at the next save",
            )
        users = read_snapshot(path)
        snap_versions: dict[str, int] = {}
        for number, raw in enumerate(users, 1):
            try:
                ctx = UserContext.from_dict(raw)
            except (ValueError, TypeError, KeyError) as exc:
                return Check("snapshot", FAIL, f"{path}: entry {number} is not a valid context: {exc}")
            snap_versions[ctx.user_id] = ctx.version
        if snap_versions == db_versions:
            return Check(
                "snapshot",
                OK,
                f"{path}: {len(users)} users, same users and versions as the database",
            )
        only_db = sorted(db_versions.keys() - snap_versions.keys())
        only_snap = sorted(snap_versions.keys() - db_versions.keys())
        changed = sorted(
            u for u in db_versions.keys() & snap_versions.keys() if db_versions[u] != snap_versions[u]
        )
        example = next(
            (f"e.g. {u!r} at version {snap_versions[u]} vs {db_versions[u]}" for u in changed),
            f"e.g. {(only_db or only_snap)[0]!r}" if only_db or only_snap else "",
        )
        detail = (
            f"{path} differs from the database: {len(only_db)} user(s) only in the database, "
            f"{len(only_snap)} only in the snapshot, {len(changed)} at another version ({example})"
        )
        if owner:
            return Check(
                "snapshot",
                WARN,
                f"{detail}; the owner (pid {owner}) saves it within "
                f"{self.settings.storage.save_interval:g} s of a change",
            )
        return Check("snapshot", FAIL, f"{detail}; it is rewritten from the database at the next start")

    async def _check_index(self, owner: int | None) -> Check:
        path = self.index_path
        async with self._read_snapshot():
            count, max_id = await self.store.embedding_watermark()
            owners = dict(await self.store.embedded_ids())
            model = await self.stored_model()
            database_id = await self.store.get_meta("database_id")
        mark_path = watermark_path(path)
        if not path.exists() and not mark_path.exists():
            if count == 0:
                return Check("index", OK, f"{path} not written yet; no memory has an embedding")
            return Check(
                "index",
                WARN if owner else FAIL,
                f"{path} is missing; SQLite has {count} embeddings (run rebuild-index)",
            )
        # The owner replaces the index file, then its watermark: a read between the two sees a
        # mismatched pair, so while the folder is owned one more read settles it.
        for _ in range(2 if owner else 1):
            read = _read_index(path, owners, model, database_id)
            if isinstance(read, tuple):
                break
        if not isinstance(read, tuple):
            return Check("index", FAIL, f"{read}; run rebuild-index")
        mark_count, mark_max = read
        if (mark_count, mark_max) == (count, max_id):
            return Check("index", OK, f"{path}: {count} vectors up to id {max_id}, as in SQLite")
        detail = (
            f"{path} is stale: it holds {mark_count} vectors up to id {mark_max}, SQLite has "
            f"{count} embeddings up to id {max_id}"
        )
        if owner:
            return Check(
                "index",
                WARN,
                f"{detail}; the owner (pid {owner}) saves it periodically and on close",
            )
        return Check("index", FAIL, f"{detail}; run rebuild-index (or it is caught up at the next start)")


def _read_index(
    path: Path, owners: dict[int, str], model: str | None, database_id: str | None
) -> tuple[int, int] | str:
    """The watermark's (count, highest id) of an index that loads and belongs to this database
    (the same checks as a start), or what is wrong with it."""
    mark_path = watermark_path(path)
    try:
        mark = json.loads(mark_path.read_text())
        mark_count, mark_max = int(mark["count"]), int(mark["max_id"])
        index = PerUserIndex.load(path, owners, model or str(mark["model"]), database_id)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{mark_path} is unreadable: {exc}"
    except IndexCorruptError as exc:
        return str(exc)
    if index.dropped:
        return f"index {path} still holds {index.dropped} vectors of forgotten memories"
    return mark_count, mark_max


async def _guarded(name: str, check: Callable[[], Any]) -> Check:
    """Run one check; a file that cannot be read fails this check and leaves the others to run."""
    try:
        result: Check = await check()
    except StorageError as exc:
        return Check(name, FAIL, str(exc))
    return result


async def open_encoder(settings: Settings, stored_model: str | None, *, load: bool = True) -> Encoder:
    """The configured encoder, refused if it is not the model that made the stored embeddings.

    ``load=False`` is for commands that never embed: they get the model's name only
    (``DeferredEncoder``), so torch and sentence-transformers are never imported.
    """
    name = encoder_name(settings.encoder)
    if stored_model is not None and name != stored_model:
        raise ConfigError(
            f"the stored embeddings were made by {stored_model}, but the configured encoder is "
            f"{name}; pass the bot's --config (or MEMORY_BOT_ENCODER_* variables)"
        )
    if not load and settings.encoder.kind != "hashing":
        return DeferredEncoder(name)
    return await build_encoder(settings.encoder)


async def stored_model_of(data_dir: Path, settings: Settings) -> str | None:
    """The embedding model recorded in the folder's database; None for a new folder."""
    view = Inspector(data_dir, settings)
    if not view.db_path.exists():
        return None
    async with view:
        return await view.stored_model()


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def snapshot_info(path: Path) -> dict[str, Any]:
    """The snapshot's header, or what is wrong with it."""
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {"path": str(path), "present": False}
    except (OSError, orjson.JSONDecodeError) as exc:
        return {"path": str(path), "present": True, "problem": f"unreadable: {exc}"}
    if not isinstance(data, dict):
        return {"path": str(path), "present": True, "problem": "not a memory-bot snapshot"}
    return {
        "path": str(path),
        "present": True,
        "format": data.get("format"),
        "format_version": data.get("format_version"),
        "saved_at": data.get("saved_at"),
        "count": data.get("count"),
    }


def index_info(path: Path) -> dict[str, Any]:
    """The index watermark (count, highest id, dim, model), or what is wrong with it."""
    mark_path = watermark_path(path)
    try:
        mark = json.loads(mark_path.read_text())
    except FileNotFoundError:
        return {"path": str(path), "present": path.exists()}
    except (OSError, ValueError) as exc:
        return {
            "path": str(path),
            "present": path.exists(),
            "problem": f"{mark_path} unreadable: {exc}",
        }
    if not isinstance(mark, dict):
        return {
            "path": str(path),
            "present": path.exists(),
            "problem": f"{mark_path} is not a watermark",
        }
    return {
        "path": str(path),
        "present": path.exists(),
        **{key: mark.get(key) for key in ("count", "max_id", "dim", "model")},
    }


__all__ = [
    "USER_SORTS",
    "Check",
    "Inspector",
    "MemoryPage",
    "UserRow",
    "UserView",
    "open_encoder",
    "stored_model_of",
]


async def _run_inline(fn: Callable[..., Any], *args: Any) -> Any:
    """The inspector's private index needs no worker thread."""
    return fn(*args)
