"""The lifecycle of a MemorySystem and the supervision of its background tasks.

Five tasks run beside the callers (commit writer, encoder batcher, embedder, auto-saver,
checkpointer). A task that dies would otherwise leave its waiters hanging: the supervisor
records the death, hands the error to the task's owner (which fails its waiters at once) and
tells the system, which refuses every later call with the same error until it is closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum

from memory.errors import BackgroundTaskError

log = logging.getLogger(__name__)


class SystemState(StrEnum):
    """Where a MemorySystem is in its life; it only moves forward (like httpx's ClientState)."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"  # a background task died: every call raises its error; close() still works


class TaskName(StrEnum):
    """The supervised background tasks, also the fault points of ``Faults``."""

    COMMIT_WRITER = "commit writer"
    ENCODER_BATCHER = "encoder batcher"
    EMBEDDER = "embedder"
    AUTO_SAVER = "auto-saver"
    CHECKPOINTER = "checkpointer"
    MODEL_LOADER = "model loader"
    CHANGE_FEED = "change feed"  # PostgreSQL: LISTEN for other processes' changes


class Faults:
    """TEST HOOK, never for production: make a background task raise at its fault point.

    Each task calls ``Supervisor.fault_point`` once per round of work (before a commit batch,
    an encoder batch, an embedding batch, a snapshot save, a checkpoint); an armed error is
    raised there once, exactly as a bug in that task would raise it.
    """

    def __init__(self) -> None:
        self._armed: dict[TaskName, BaseException] = {}

    def arm(self, task: TaskName | str, error: BaseException) -> None:
        self._armed[TaskName(task)] = error

    def fire(self, task: TaskName) -> None:
        error = self._armed.pop(task, None)
        if error is not None:
            raise error


class Supervisor:
    """Runs background tasks; the first death of each is kept, logged once, and reported."""

    def __init__(
        self,
        faults: Faults | None = None,
        on_death: Callable[[BackgroundTaskError], None] | None = None,
    ) -> None:
        self._faults = faults
        self._on_death = on_death
        self._tasks: dict[TaskName, asyncio.Task[None]] = {}
        self.deaths: dict[TaskName, BackgroundTaskError] = {}
        self._stopped_by: dict[TaskName, str] = {}

    def spawn(
        self,
        name: TaskName,
        work: Callable[[], Awaitable[None]],
        on_death: Callable[[BackgroundTaskError], None],
    ) -> asyncio.Task[None]:
        """Run ``work()``; if it raises, ``on_death`` fails the owner's waiters with the error.

        ``work`` is the coroutine function, not a coroutine: a task cancelled before its first
        step then leaves no coroutine that was never awaited.
        """
        task = asyncio.create_task(self._guard(name, work, on_death), name=f"memory-bot {name}")
        self._tasks[name] = task
        return task

    async def _guard(
        self,
        name: TaskName,
        work: Callable[[], Awaitable[None]],
        on_death: Callable[[BackgroundTaskError], None],
    ) -> None:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except BackgroundTaskError as upstream:
            # A task this one relies on died (recorded and logged already): this one stops
            # with that task's error, and is not a second death.
            self._stopped_by[name] = upstream.task
            on_death(upstream)
        except Exception as exc:  # any death: recorded, logged once, raised to every caller
            error = BackgroundTaskError(name, exc, datetime.now(UTC))
            error.__cause__ = exc
            self.deaths[name] = error
            log.error("%s", error, exc_info=exc)  # a bug: its traceback is logged once, here
            on_death(error)
            if self._on_death is not None:
                self._on_death(error)

    def fault_point(self, name: TaskName) -> None:
        """Where the test hook may make task ``name`` fail (a no-op without ``Faults``)."""
        if self._faults is not None:
            self._faults.fire(name)

    def first_death(self) -> BackgroundTaskError | None:
        return next(iter(self.deaths.values()), None)

    def health(self) -> dict[str, str]:
        """Each task's state: running, stopped, or why it died."""
        out: dict[str, str] = {}
        for name, task in self._tasks.items():
            death = self.deaths.get(name)
            if death is not None:
                out[str(name)] = f"died at {death.at.isoformat()}: {death.cause_text}"
            elif name in self._stopped_by:
                out[str(name)] = f"stopped: the {self._stopped_by[name]} it relies on died"
            else:
                out[str(name)] = "stopped" if task.done() else "running"
        return out
