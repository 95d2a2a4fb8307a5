"""The encoder's urgent lane: a model thread that answers its waiting callers itself.

Why not a task awaiting a thread, as the background lane does: every hand-over between a
thread and the event loop waits for a loop iteration, and a loop serving many callers runs
long iterations (under 100 updating callers, 10-20 ms each: a group commit wakes them all at
once). A query's model call through a task costs three hand-overs (the task starts, the
thread's result wakes it, it wakes the caller); here the thread takes the requests off a
locked queue, runs them, and resolves each caller's future with ``call_soon_threadsafe``: one.

Concurrent requests share model calls (up to ``batch_size`` texts), as the background lane's
do. A caller that is cancelled leaves the others' answers untouched (its future is skipped).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from memory.errors import EncoderError, SystemClosedError

log = logging.getLogger(__name__)
Vectors = npt.NDArray[np.float32]
T = TypeVar("T")
_Waiting = tuple[list[str], "asyncio.Future[Vectors]"]


class UrgentLane:
    """One thread running ``run(texts)`` for callers who wait, answered from the thread."""

    def __init__(self, name: str, batch_size: int) -> None:
        self._name = name
        self._batch_size = batch_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._lock = threading.Lock()  # guards the queue, _draining and _closed
        self._queue: deque[_Waiting] = deque()
        self._draining = False
        self._closed = False
        self._run: Callable[[list[str]], Vectors] | None = None
        self.batches = 0

    async def prepare(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the lane's thread (its own tokenizer, thread settings, a warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def start(self, run: Callable[[list[str]], Vectors]) -> None:
        self._run = run

    @property
    def ready(self) -> bool:
        return self._run is not None

    async def encode(self, texts: Sequence[str]) -> Vectors:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Vectors] = loop.create_future()
        with self._lock:
            if self._closed:
                raise SystemClosedError("the encoder is closed; start a new MemorySystem")
            self._queue.append((list(texts), future))
            idle, self._draining = not self._draining, True
        if idle:
            self._executor.submit(self._drain, loop)
        return await future

    def _take(self) -> list[_Waiting]:
        """The next model call's requests; [] (and not draining) when none is left."""
        with self._lock:
            if not self._queue:
                self._draining = False
                return []
            batch = [self._queue.popleft()]
            size = len(batch[0][0])
            while self._queue and size + len(self._queue[0][0]) <= self._batch_size:
                batch.append(self._queue.popleft())
                size += len(batch[-1][0])
            return batch

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the lane's thread: answer requests, a model call each, until none is left."""
        assert self._run is not None
        while batch := self._take():
            texts = [t for request in batch for t in request[0]]
            try:
                vectors: Vectors | None = self._run(texts)
                error: EncoderError | None = None
            except (RuntimeError, ValueError, OSError) as exc:
                vectors, error = (
                    None,
                    EncoderError(f"the embedding model failed on {len(texts)} texts: {exc}"),
                )
            self.batches += 1
            loop.call_soon_threadsafe(_deliver, batch, vectors, error)

    async def close(self) -> None:
        """Fail what is queued at once, let the call in hand finish (its callers get their
        answers), then stop the thread; safe to call twice."""
        with self._lock:
            self._closed = True
            waiting, self._queue = list(self._queue), deque()
        _deliver(waiting, None, SystemClosedError("the encoder was closed"))
        await asyncio.to_thread(self._executor.shutdown, wait=True)


def _deliver(batch: list[_Waiting], vectors: Vectors | None, error: Exception | None) -> None:
    """On the event loop: each caller's rows, or the error; a cancelled caller is skipped."""
    start = 0
    for texts, future in batch:
        rows = None if vectors is None else vectors[start : start + len(texts)]
        start += len(texts)
        if future.done():
            continue
        if rows is not None:
            future.set_result(rows)
        else:
            future.set_exception(error or EncoderError("the embedding model returned nothing"))
