"""Group commit, the part both backends share: a queue of units and the one task that takes
whatever is queued as a batch and commits it in one transaction.

A backend says only how to commit a batch (``_commit_batch``); the queue, the batching, the
refusal of new units after ``close`` or the writer's death, and the failing of every waiting
caller when it dies, are here.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Generic, TypeVar

from memory.errors import BackgroundTaskError, SystemClosedError
from memory.supervisor import Supervisor, TaskName

Item = TypeVar("Item")
Result = TypeVar("Result")
# Let callers woken by the last commit submit their next write first: without this, batches
# alternate large and tiny, and the tiny ones pay a whole fsync.
YIELDS_BEFORE_DRAIN = 3


@dataclass(slots=True)
class Queued(Generic[Item, Result]):
    """One submitted unit and the future its caller awaits."""

    item: Item
    future: asyncio.Future[Result]


class BatchWriter(ABC, Generic[Item, Result]):
    def __init__(self, max_batch: int, supervisor: Supervisor) -> None:
        self._max_batch = max_batch
        self._supervisor = supervisor
        self._queue: asyncio.Queue[Queued[Item, Result] | None] = asyncio.Queue()
        self._batch: list[Queued[Item, Result]] = []  # taken from the queue, not yet resolved
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._dead: BackgroundTaskError | None = None
        self.batches = 0
        self.units = 0
        self.largest_batch = 0

    def start(self) -> None:
        self._task = self._supervisor.spawn(TaskName.COMMIT_WRITER, self._run, self._died)

    def _enqueue(self, item: Item) -> asyncio.Future[Result]:
        """Queue one unit; its future resolves after its transaction has committed."""
        if self._dead is not None:
            raise self._dead.with_traceback(None)
        if self._closed:
            raise SystemClosedError("the store is closed; start a new MemorySystem to write")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(Queued(item, future))
        return future

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def _drain(self) -> None:
        """Commit everything queued, then stop (returns even when the writer died: the
        supervisor kept the error)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(None)
        if self._task is not None:
            await self._task

    def _died(self, error: BackgroundTaskError) -> None:
        """Fail the batch in hand and everything queued at once: no caller waits on a dead writer."""
        self._dead = error
        waiting = [*self._batch]
        while not self._queue.empty():
            queued = self._queue.get_nowait()
            if queued is not None:
                waiting.append(queued)
        self._batch = []
        for queued in waiting:
            if not queued.future.done():
                queued.future.set_exception(error)

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            for _ in range(YIELDS_BEFORE_DRAIN):
                await asyncio.sleep(0)
            batch: list[Queued[Item, Result]] = []
            if first is None:
                stopping = True
            else:
                batch.append(first)
            while len(batch) < self._max_batch and not self._queue.empty():
                queued = self._queue.get_nowait()
                if queued is None:
                    stopping = True
                    continue
                batch.append(queued)
            if batch:
                self._batch = batch
                self._supervisor.fault_point(TaskName.COMMIT_WRITER)
                await self._commit_batch(batch)
                self._batch = []

    def _committed(self, batch: list[Queued[Item, Result]], results: list[Result]) -> None:
        """Count a committed batch and give each caller its result."""
        self.batches += 1
        self.units += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        for queued, result in zip(batch, results, strict=True):
            if not queued.future.done():
                queued.future.set_result(result)

    @abstractmethod
    async def _commit_batch(self, batch: list[Queued[Item, Result]]) -> None:
        """Commit ``batch`` in one transaction and resolve (or fail) every future in it."""
