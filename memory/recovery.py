"""Opening a data folder: SQLite is the truth, the snapshot the fallback, never a silent empty start."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiofiles.os

from memory.context import UserContext
from memory.errors import InvalidInputError, SnapshotCorruptError, StorageError
from memory.snapshot import read_snapshot
from memory.store import SqliteStore, context_statements, damaged_database

log = logging.getLogger(__name__)

DB_NAME = "memory.db"
SNAPSHOT_NAME = "contexts.json"
INDEX_NAME = "vectors.faiss"


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
    snapshot_exists = await aiofiles.os.path.exists(snapshot)
    if await aiofiles.os.path.exists(store.path):
        try:
            report.migrations_applied = await store.open(integrity_check=check)
        except StorageError as exc:
            if exc.path == store.path and snapshot_exists:
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
    statements = []
    for raw in users:
        try:
            ctx = UserContext.from_dict(raw)
        except (InvalidInputError, TypeError) as exc:
            raise StorageError(f"snapshot {snapshot} holds an invalid context: {exc}", snapshot) from exc
        encoded = ctx.to_json().decode()
        statements += context_statements(ctx, encoded, now, "recovery", {"op": "restored_from_snapshot"})
    if statements:
        await store.commit(statements)


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
