"""LISTEN/NOTIFY: one connection per process hears which users other processes changed.

The writer sends one NOTIFY per batch transaction (``postgres_writer.notify_payloads``), carrying
the sender's token, so a process ignores its own. When the connection is lost the listener
reconnects with backoff (the loss is logged once) and then calls the listener with None: any
notification sent meanwhile is gone, so every cached context must be revalidated.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg
import orjson

from memory.errors import StorageError
from memory.storage.postgres_schema import NOTIFY_CHANNEL
from memory.storage.protocol import ChangeListener

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.05
BACKOFF_MAX = 5.0
# A connection that died without a word (a dropped network) is found by a ping this often.
PING_INTERVAL = 10.0


class ChangeFeed:
    """The LISTEN side of one process; ``run`` is its background task."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        token: str,
        listener: ChangeListener,
        location: str,
        ping_interval: float = PING_INTERVAL,
    ) -> None:
        self._connect = connect
        self._token = token
        self._listener = listener
        self._location = location
        self._ping_interval = ping_interval
        self.connected = asyncio.Event()
        self.notifications = 0
        self.reconnects = 0

    def _on_notify(self, conn: object, pid: int, channel: str, payload: object) -> None:
        try:
            message = orjson.loads(str(payload))
            sender, users = message["p"], message["u"]
        except (ValueError, KeyError, TypeError) as exc:
            # Not ours to understand: what changed is unknown, so everything is revalidated.
            log.warning("unreadable change notification on %s (%s): revalidating all", self._location, exc)
            self._listener(None)
            return
        if sender == self._token:
            return
        self.notifications += 1
        self._listener([str(u) for u in users])

    async def run(self) -> None:
        failures = 0
        first = True
        while True:
            try:
                conn = await self._connect()
            except StorageError as exc:
                if failures == 0:
                    log.warning("change notifications from %s lost; reconnecting: %s", self._location, exc)
                failures += 1
                await asyncio.sleep(min(BACKOFF_MAX, BACKOFF_FIRST * 2**failures))
                continue
            failures = 0
            try:
                await self._listen(conn, first)
            except (
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
                OSError,
            ) as exc:
                if failures == 0:
                    log.warning("change notifications from %s lost; reconnecting: %s", self._location, exc)
                failures += 1
            finally:
                self.connected.clear()
                conn.terminate()
            first = False

    async def _listen(self, conn: asyncpg.Connection, first: bool) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        if not first:
            self.reconnects += 1
            log.info("change notifications from %s back; revalidating every cached context", self._location)
            self._listener(None)
        self.connected.set()
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), self._ping_interval)
            except TimeoutError:
                await conn.execute("SELECT 1", timeout=self._ping_interval)
        raise asyncpg.InterfaceError("the notification connection was closed")
