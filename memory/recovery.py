"""Opening a data folder: SQLite is the truth, the snapshot the fallback, never a silent empty start."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiofiles.os

from memory.atomic import remove_dead_temps
from memory.context import UserContext, stored_context
from memory.errors import DataDamagedError, SnapshotCorruptError, StorageError
from memory.ownership import LOCK_NAME, holder_pid
from memory.snapshot import read_snapshot
from memory.storage.protocol import ContextWrite, Unit
from memory.storage.sqlite import SqliteStore
from memory.storage.sqlite_errors import damaged_database

log = logging.getLogger(__name__)

DB_NAME = "memory.db"
SNAPSHOT_NAME = "contexts.json"
INDEX_NAME = "vectors.faiss"
# The files written through a temp file (memory/atomic.py): the snapshot, the index, its watermark.
ATOMIC_NAMES = (SNAPSHOT_NAME, INDEX_NAME, INDEX_NAME + ".watermark.json")


@dataclass(slots=True)
class StartupReport:
    """What ``start()`` found and did; logged, returned, and kept in ``stats()``."""

    data_dir: str
    users: int = 0
    migrations_applied: list[int] = field(default_factory=list)
    created_database: bool = False
    rebuilt_from_snapshot: int | None = None
    snapshot_problem: str | None = None
    index_action: str | None = None
    embeddings_pending: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


async def open_store(store: SqliteStore, snapshot: Path, report: StartupReport, *, check: bool) -> None:
    """Open ``store``, rebuilding it from ``snapshot`` when the database file is missing."""
    await aiofiles.os.wrap(remove_litter)(store.path.parent, report)
    snapshot_exists = await aiofiles.os.path.exists(snapshot)
    if await aiofiles.os.path.exists(store.path):
        try:
            report.migrations_applied = await store.open(integrity_check=check)
        except DataDamagedError as exc:
            if snapshot_exists:
                raise damaged_database(store.path, exc.__cause__ or exc, snapshot) from exc
            raise
        return
    users: list[dict[str, Any]] = []
    if snapshot_exists:
        try:
            users = read_snapshot(snapshot)
        except SnapshotCorruptError as exc:
            raise StorageError(
                f"the database {store.path} is missing and the snapshot {snapshot} is damaged "
                f"({exc}); not starting empty. Restore either file from a backup",
                store.path,
            ) from exc
    report.created_database = True
    report.migrations_applied = await store.open(integrity_check=False)
    if snapshot_exists:
        await _rebuild_contexts(store, snapshot, users)
        report.rebuilt_from_snapshot = len(users)
        note = (
            f"database {store.path} was missing: rebuilt {len(users)} contexts from {snapshot}; "
            "their history starts here and memories could not be recovered from the snapshot"
        )
        report.notes.append(note)
        log.warning(note)


async def _rebuild_contexts(store: SqliteStore, snapshot: Path, users: list[dict[str, Any]]) -> None:
    now = datetime.now(UTC)
    writes = []
    for raw in users:
        try:
            ctx = UserContext.from_dict(raw)
        except (ValueError, TypeError, KeyError) as exc:  # InvalidInputError is a ValueError
            raise StorageError(f"snapshot {snapshot} holds an invalid context: {exc}", snapshot) from exc
        encoded = ctx.to_json().decode()
        writes.append(ContextWrite(ctx, encoded, now, "recovery", {"op": "restored_from_snapshot"}))
    await _write_contexts(store, writes)


async def _write_contexts(store: SqliteStore, writes: list[ContextWrite]) -> None:
    """Commit restored contexts (one unit each, committed together by the group commit)."""
    await asyncio.gather(*(store.submit(Unit(w.context.user_id, write=w)) for w in writes))


def remove_litter(folder: Path, report: StartupReport) -> None:
    """Delete the temp files that writers killed mid-write left (tens of MB each at 100k users).

    Called once the folder is owned, before anything is written: a temp file with this
    process's own pid then belongs to an earlier process that had the same pid.
    """
    owned = holder_pid(folder / LOCK_NAME) == os.getpid()
    try:
        removed = remove_dead_temps(folder, ATOMIC_NAMES, include_own=owned)
    except OSError as exc:
        raise StorageError(
            f"cannot remove {exc.filename or folder}, a temp file left by a writer that died: "
            f"{exc.strerror or exc}; make {folder} writable by the bot's user",
            exc.filename or folder,
        ) from exc
    if removed:
        note = f"removed {len(removed)} temp file(s) left by writers that died: " + ", ".join(
            sorted(path.name for path in removed)
        )
        report.notes.append(note)
        log.info("%s", note)


async def load_contexts(
    store: SqliteStore, snapshot: Path, report: StartupReport
) -> list[tuple[UserContext, bytes]]:
    """Every stored context with its JSON; a damaged one is restored from the snapshot.

    A context row that does not parse is replaced by the user's entry in the snapshot (as a new
    version after every stored one, so the history stays intact and ordered). Without such an
    entry start stops: starting without the person, or empty, would hide the damage.
    """
    loaded: list[tuple[UserContext, bytes]] = []
    damaged: dict[str, DataDamagedError] = {}
    for user_id, data in await store.load_contexts():
        try:
            loaded.append((stored_context(data, store.path, f"the contexts row of user {user_id!r}"), data))
        except DataDamagedError as exc:
            damaged[user_id] = exc
    if damaged:
        loaded += await _restore_damaged(store, snapshot, damaged, report)
    return loaded


async def _restore_damaged(
    store: SqliteStore, snapshot: Path, damaged: dict[str, DataDamagedError], report: StartupReport
) -> list[tuple[UserContext, bytes]]:
    first_uid, first = next(iter(damaged.items()))
    try:
        saved = {
            str(raw.get("user_id")): raw
            for raw in await aiofiles.os.wrap(read_snapshot)(snapshot)
            if isinstance(raw, dict)
        }
    except StorageError as exc:  # missing, unreadable or damaged itself
        raise DataDamagedError(
            f"{first}; the snapshot cannot replace it ({exc}). Not starting without "
            f"user {first_uid!r}: restore {store.path} from a backup",
            store.path,
        ) from first
    now = datetime.now(UTC)
    restored: list[tuple[UserContext, bytes]] = []
    writes: list[ContextWrite] = []
    for uid, problem in damaged.items():
        if uid not in saved:
            raise DataDamagedError(
                f"{problem}; the snapshot {snapshot} does not hold user {uid!r}. Not starting "
                f"without them: restore {store.path} from a backup",
                store.path,
            ) from problem
        try:
            old = UserContext.from_dict(saved[uid])
        except (ValueError, TypeError, KeyError) as exc:  # InvalidInputError is a ValueError
            raise DataDamagedError(
                f"{problem}; the snapshot's entry for {uid!r} is invalid too ({exc}): restore "
                f"{store.path} from a backup",
                store.path,
            ) from problem
        after = await store.stored_version(uid)
        ctx = old.copy_with(version=after + 1)
        encoded = ctx.to_json()
        change = {"op": "restored_from_snapshot", "snapshot_version": old.version, "damaged_version": after}
        writes.append(ContextWrite(ctx, encoded.decode(), now, "recovery", change))
        restored.append((ctx, encoded))
        note = (
            f"the context of user {uid!r} in {store.path} was damaged ({problem.__cause__}); "
            f"restored version {old.version} of it from {snapshot} as version {ctx.version}: "
            f"changes after version {old.version} are lost unless its history holds them "
            f"(`memory-admin rollback {uid} {after}` brings back the last stored version)"
        )
        report.notes.append(note)
        log.warning("%s", note)
    await _write_contexts(store, writes)
    return restored


def check_snapshot(snapshot: Path, report: StartupReport) -> bool:
    """Whether the snapshot needs rewriting (missing or damaged); the database is intact."""
    if not snapshot.exists():
        return True
    try:
        read_snapshot(snapshot)
    except SnapshotCorruptError as exc:
        report.snapshot_problem = str(exc)
        log.warning("%s", exc)
        return True
    return False
