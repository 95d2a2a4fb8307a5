"""Group commit for PostgreSQL: one writer task per process sends whatever is queued as one
transaction, checks every unit's expected version first and writes only the units that passed.

Per batch: lock the contexts of every checked user with one statement in user-id order
(``LOCK_CONTEXTS``: two processes' batches then cannot deadlock on them), decide in queue order
which units pass (a unit built on another version is a ``Conflict`` and writes nothing, and so
does every later checked unit of that user in the batch), write the passing units round by round
(at most one unit per user in a round, so a user's units apply in queue order) with set-based
statements, move the lexical totals, send one NOTIFY with the users changed, COMMIT, and only
then resolve the callers (``synchronous_commit`` is on: acknowledged means durable).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeAlias

import asyncpg
import orjson

from memory.errors import StorageError
from memory.storage.batch_writer import BatchWriter, Queued
from memory.storage.postgres_schema import NOTIFY_CHANNEL
from memory.storage.postgres_units import (
    ADD_TOTALS,
    DROP_PLACEHOLDERS,
    LOCK_CONTEXTS,
    Lease,
    Totals,
    write_round,
)
from memory.storage.protocol import COMMITTED, Conflict, Outcome, Unit
from memory.supervisor import Supervisor

log = logging.getLogger(__name__)

# A deadlock can still come from rows outside the contexts (two processes forgetting the same
# memories): PostgreSQL aborts one transaction, which is then run again.
RETRIES = 5
RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
# NOTIFY payloads are limited to 8000 bytes: a larger batch's users go in several, all in the
# same transaction (what costs is the notification queue's lock at commit, taken once).
PAYLOAD_LIMIT = 7000
# What a unit's own bad data raises: the others of its batch are then committed without it.
DATA_ERRORS = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    ValueError,
    TypeError,
    OverflowError,
)


_Pending: TypeAlias = Queued[Unit, Outcome]


def notify_payloads(token: str, users: Sequence[str]) -> list[str]:
    """The NOTIFY payloads naming ``users`` (JSON: the sender's token and the user ids)."""
    payloads: list[str] = []
    chunk: list[str] = []
    size = 0
    for user in users:
        cost = len(orjson.dumps(user)) + 1
        if chunk and size + cost > PAYLOAD_LIMIT:
            payloads.append(orjson.dumps({"p": token, "u": chunk}).decode())
            chunk, size = [], 0
        chunk.append(user)
        size += cost
    if chunk:
        payloads.append(orjson.dumps({"p": token, "u": chunk}).decode())
    return payloads


def _checked(unit: Unit) -> bool:
    return (unit.write is not None or unit.forget_user) and unit.expected_version is not None


def _notifies(unit: Unit) -> bool:
    """Everything but setting embeddings changes what another process may have cached."""
    return not unit.empty and bool(
        unit.write
        or unit.memories
        or unit.forget_ids
        or unit.forget_user
        or unit.edits
        or unit.redactions
        or unit.compact_before
        or unit.erasure
    )


class PostgresWriter(BatchWriter[Unit, Outcome]):
    """The one writer of a process: a queue of units and the task that commits them in batches."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        location: str,
        token: str,
        shard: int,
        max_batch: int,
        supervisor: Supervisor,
        lease_seconds: float,
    ) -> None:
        super().__init__(max_batch, supervisor)
        self._lease = Lease(token, lease_seconds)
        self._connect = connect
        self._conn: asyncpg.Connection | None = None
        self._location = location
        self._token = token
        self._shard = shard
        self.conflicts = 0
        self.retries = 0  # batches run again after a deadlock or serialization failure
        self.notifies = 0

    def submit(self, unit: Unit) -> asyncio.Future[Outcome]:
        return self._enqueue(unit)

    async def close(self) -> None:
        """Commit everything queued, then stop."""
        await self._drain()
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        try:
            outcomes = await self._commit_retrying([p.item for p in batch])
        except DATA_ERRORS as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
            for pending in batch:  # one bad unit must not sink the others
                await self._commit_batch([pending])
            return
        except StorageError as exc:  # could not connect: nothing was sent
            for pending in batch:
                self._fail(pending, exc)
            return
        except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError) as exc:
            conn = self._conn
            # asyncpg's protocol can be left mid-operation by a connection killed under it (an
            # InternalClientError on the ROLLBACK): that connection is as good as lost.
            if conn is not None and not conn.is_closed() and not isinstance(exc, asyncpg.InternalClientError):
                # The server refused the batch and rolled it back: nothing of it was written.
                for pending in batch:
                    self._fail(pending, exc)
                return
            # The connection went, maybe mid-commit: whether these units were written is
            # unknown. The next batch gets a new connection.
            self._conn = None
            if conn is not None:
                conn.terminate()
            for pending in batch:
                self._fail(pending, exc, unknown=True)
            return
        self.conflicts += sum(1 for o in outcomes if isinstance(o, Conflict))
        self._committed(batch, outcomes)

    async def _commit_retrying(self, units: list[Unit]) -> list[Outcome]:
        if self._conn is None:
            self._conn = await self._connect()
        for attempt in range(RETRIES):
            try:
                async with self._conn.transaction():
                    return await self._write(self._conn, units)
            except RETRYABLE as exc:
                if attempt == RETRIES - 1:
                    raise
                self.retries += 1
                log.info("batch of %d units retried after: %s", len(units), exc)
        raise AssertionError("unreachable")

    async def _write(self, conn: asyncpg.Connection, units: list[Unit]) -> list[Outcome]:
        checked = sorted({u.user_id for u in units if _checked(u)})
        current: dict[str, int] = {}
        if checked:
            current = {r[0]: int(r[1]) for r in await conn.fetch(LOCK_CONTEXTS, checked)}
        placeholders = [uid for uid, version in current.items() if version == 0]
        outcomes: list[Outcome] = []
        failed: set[str] = set()
        rounds: list[list[Unit]] = []
        seen: dict[str, int] = {}
        changed: dict[str, None] = {}
        for unit in units:
            uid = unit.user_id
            if _checked(unit):
                version = current[uid]
                if uid in failed or unit.expected_version != version:
                    failed.add(uid)
                    outcomes.append(Conflict(version))
                    continue
                current[uid] = unit.write.context.version if unit.write is not None else 0
            outcomes.append(COMMITTED)
            position = seen.get(uid, 0)
            seen[uid] = position + 1
            if position == len(rounds):
                rounds.append([])
            rounds[position].append(unit)
            if _notifies(unit):
                changed[uid] = None
        totals = Totals()
        for round_units in rounds:
            await write_round(conn, round_units, totals, self._lease)
        if placeholders:
            await conn.execute(DROP_PLACEHOLDERS, placeholders)
        if totals.rows or totals.tokens:
            await conn.execute(ADD_TOTALS, self._shard, totals.rows, totals.tokens)
        if changed:
            payloads = notify_payloads(self._token, list(changed))
            await conn.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) p", NOTIFY_CHANNEL, payloads)
            self.notifies += 1
        return outcomes

    def _fail(self, pending: _Pending, exc: BaseException, *, unknown: bool = False) -> None:
        log.error("commit failed on %s: %s", self._location, exc)
        if unknown:
            message = (
                f"lost the connection to {self._location} while committing ({exc}); the change "
                "may or may not have been written: reload and check"
            )
        else:
            message = f"could not commit to {self._location}: {exc}"
        if not pending.future.done():
            pending.future.set_exception(StorageError(message))
