"""Semantic memory: write-behind embedding, the per-user FAISS index, and hybrid retrieval.

A memory's text is committed first (the lexical ranker finds it at once); its embedding is
made just after, in batches, so writes are not bound by the model's speed.

The model loads in the background (the "model loader" task): ``start`` returns once the index
is open, and until the model is ready a retrieve waits ``encoder.ready_wait_ms`` at most, then
ranks lexically and marks each result ``lexical-only``. A model that fails to load is logged,
shown in stats and health, and leaves everything else working.

Read your own writes at the cost of your own work: a retrieve embeds the asking user's pending
memories inside its own model call, with the query, on the encoder's urgent lane (a second
thread over the same weights), so it waits neither for everyone else's backlog (measured: one
retrieve behind a backlog of 9,807 took 236 s in FIFO order) nor for the background batch in
flight (383 ms, 28x an idle retrieve). Storing those vectors and any of the user's memories in
the batch in flight are waited for ``retrieval.pending_wait_ms`` at most; memories still
unembedded then are marked ``not-embedded`` (the lexical ranker finds them).

``close`` stops the embedder after the batch in flight: the backlog is durable (rows without
an embedding) and the next start embeds it, so a close never waits for thousands of texts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from memory.encoder import (
    DeferredEncoder,
    Encoder,
    Vectors,
    build_encoder,
    encode_urgent,
    load_encoder,
)
from memory.errors import BackgroundTaskError, EncoderError, IndexCorruptError, StorageError
from memory.index import PerUserIndex, erase_from_file
from memory.locks import LockLevel, OrderedLock
from memory.models import same_vectors
from memory.ranker import person_part
from memory.records import Memory, ScoredMemory
from memory.recovery import StartupReport
from memory.retrieval import Retriever
from memory.settings import Settings
from memory.storage.protocol import DenseSearch, Store, Unit
from memory.store_dense import StoreDense
from memory.supervisor import Supervisor, TaskName
from memory.workers import SingleThreadWorker, wait_any

log = logging.getLogger(__name__)
INDEX_SAVE_INTERVAL = 30.0
# After an erasure the index file is rewritten this soon, not at the usual interval: a forgotten
# person's vectors must not stay on disk (a start also drops any it finds there).
ERASURE_SAVE_DELAY = 5.0
SWEEP_INTERVAL = 10.0  # a shared store: how often an idle embedder claims orphaned rows
LEXICAL_ONLY = "lexical-only"  # in ``rankers``: ranked while the model was not ready
NOT_EMBEDDED = "not-embedded"  # in ``rankers``: this memory had no vector yet


class EncoderState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


def embedding_text(memory: Memory) -> str:
    """What the model sees of a memory: its own text (context words measured worse here), and
    of an exchange only what the person said. The bot's reply states nothing about the person,
    and it often quotes an older memory ("Last time you told me ...") or a stock phrase: in
    the vector, that made a new memory look like the one quoted ("I have a dog named Rex",
    answered with a quote about the cello, outranked the cello for "which instrument do I
    play?"), as the lexical index already knew (memory/retrieval.py ``lexical_document``)."""
    return person_part(memory)


class SemanticMemory:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        index_path: Path,
        encoder: Encoder | None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self._settings = settings
        self._supervisor = supervisor or Supervisor()
        self._dead: BackgroundTaskError | None = None
        self._store = store
        self._index_path = index_path
        self._encoder: Encoder | None = encoder
        self._owns_encoder = encoder is None
        self._faiss = SingleThreadWorker("memory-bot-faiss")
        self._index_lock = OrderedLock(LockLevel.INDEX)
        self._index: PerUserIndex | None = None
        # A store that keeps the vectors (PostgreSQL) is searched itself: no FAISS file to keep
        # coherent with other processes' writes and forgets.
        self._store_dense = (
            StoreDense(store, self._faiss.run, settings.storage.faiss_shard_threshold)
            if isinstance(store, DenseSearch)
            else None
        )
        self._last_sweep = 0.0
        self._retriever = Retriever(store, settings.retrieval, self._faiss.run, settings.encoder.model)
        self._pending: deque[Memory] = deque()
        # Memory id -> the text its vector must be made from (see ``_current``): an embedding
        # of a text that an edit replaced meanwhile is dropped, never stored or indexed.
        self._live: dict[int, str] = {}
        # A process whose encoder never loads (memory-admin's changes) never opens the index:
        # what it forgets is erased from the file at close (``erase_from_file``).
        self._erased_unopened: set[int] = set()
        # Ids committed, edited or forgotten before the backlog is read (see _read_backlog).
        self._touched: set[int] | None = set()
        self._pending_by_user: dict[str, int] = {}
        self._work = asyncio.Event()
        self._stopping = asyncio.Event()
        self._progress = asyncio.Event()
        self._embed_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._index_dirty = False
        self._erasure_unsaved = False
        self._database_id = ""
        self._report = StartupReport(data_dir=str(index_path.parent))
        self._last_index_save = time.monotonic()
        self.embedded = 0
        self.encoder_state = EncoderState.LOADING
        self.encoder_error: str | None = None
        self.load_seconds: float | None = None
        self._ready = asyncio.Event()  # set when the model is ready or failed to load
        self._loader: asyncio.Task[None] | None = None
        self._urgent: dict[str, int] = {}  # users waiting in a retrieve, for stats
        self._in_flight: list[Memory] = []  # the embedder's batch
        self._in_flight_ids: set[int] = set()
        self._urgent_ids: set[int] = set()  # embedded by a retrieve, being stored
        self._storing: set[asyncio.Task[bool]] = set()  # a retrieve's vectors being stored
        self._embed_seconds = 0.0
        self._embed_texts = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, report: StartupReport) -> None:
        """Start opening the index and loading the model, both in the background.

        Neither is on the start path (at 100k memories, reading the ids, the index file and
        the backlog took 2-3 s before the first context could be changed): until both are
        done a retrieve ranks lexically and says so, as while the model loads. A forget
        meanwhile is safe: the index is opened under the index lock from the ids SQLite holds
        then, so it never picks up the vectors of a memory forgotten before, and a forget
        after that waits for the lock and removes them from it.
        """
        if self._encoder is None:
            self._encoder = await build_encoder(self._settings.encoder, self._supervisor, load=False)
        encoder = self._encoder
        self._database_id = await self._store.database_id()
        await self._check_model(encoder, report)
        self._report = report  # completed by the loader (index action, backlog)
        if self._store_dense is not None:
            report.index_action = "vectors searched in the database"
        elif isinstance(encoder, DeferredEncoder):
            report.index_action = "not opened: this process never embeds or searches by vector"
        self._loader = self._supervisor.spawn(TaskName.MODEL_LOADER, self._load_model, self._died)

    async def _load_model(self) -> None:
        """Open the index beside the model's load, then read the backlog and start the embedder;
        a model that fails to load is reported, not fatal (the index still opens: forgets
        need it)."""
        encoder = self._encoder
        assert encoder is not None
        opening = asyncio.ensure_future(self._open_index_now()) if self._index_wanted() else None
        try:
            loaded = await self._load_encoder(encoder)
            if opening is not None:
                await opening
        finally:
            if opening is not None and not opening.done():  # cancelled by close()
                opening.cancel()
                await asyncio.gather(opening, return_exceptions=True)
        if loaded:
            if self._index is None and self._store_dense is None:  # nothing stored said the size
                async with self._index_lock:
                    self._index = await self._open_index(encoder, self._report, encoder.dim)
            await self._read_backlog()
            self.encoder_state = EncoderState.READY
        else:
            self._touched = None  # no backlog is read: nothing to tell apart from it
        log.info("index: %s", self._report.index_action)
        self._ready.set()
        if loaded:
            log.info("embedding model %s ready in %.1f s", encoder.name, self.load_seconds or 0.0)
            self._task = self._supervisor.spawn(TaskName.EMBEDDER, self._embed_loop, self._died)
        self._notify()

    async def _load_encoder(self, encoder: Encoder) -> bool:
        """Load the model; False (reported in stats, health and the log) if it failed."""
        started = time.perf_counter()
        log.info("loading the embedding model %s in the background", encoder.name)
        try:
            await load_encoder(encoder)
        except Exception as exc:  # any load failure is reported in stats and health
            self.encoder_state = EncoderState.FAILED
            self.encoder_error = str(exc) or type(exc).__name__
            trace = None if isinstance(exc, (EncoderError, ImportError, OSError)) else exc
            log.error(
                "the embedding model failed to load; retrieval stays lexical: %s",
                self.encoder_error,
                exc_info=trace,
            )
            return False
        self.load_seconds = time.perf_counter() - started
        return True

    def _index_wanted(self) -> bool:
        """Whether this process keeps a FAISS index (not where the database searches vectors,
        nor where the encoder is only a model's name)."""
        return self._store_dense is None and not isinstance(self._encoder, DeferredEncoder)

    async def _open_index_now(self) -> None:
        assert self._encoder is not None
        async with self._index_lock:
            self._index = await self._open_index(self._encoder, self._report, None)

    async def _read_backlog(self) -> None:
        """Queue the memories stored without an embedding (the last run's backlog).

        Read once the model is ready, not at start (18k rows cost 0.5-1 s there). Memories
        committed, edited or forgotten since start are left out: ``committed`` queued them
        already (or their text changed, or they are gone), and the rows read may predate it.
        """
        pending = await self._store.unembedded()
        touched, self._touched = self._touched or set(), None
        self._report.embeddings_pending = len(pending)
        self.committed([m for m in pending if m.id not in touched and m.id not in self._live])

    @property
    def ready(self) -> bool:
        return self.encoder_state is EncoderState.READY

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Until the model is ready (True) or failed to load, or ``timeout`` seconds passed."""
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            return False
        return self.ready

    def loader_health(self) -> str:
        """The model loader's entry in ``health()["tasks"]``: alive while loading or ready."""
        if self.encoder_state is EncoderState.FAILED:
            return f"failed to load the model: {self.encoder_error}"
        if self._stopping.is_set():
            return "stopped"
        return "starting" if self.encoder_state is EncoderState.LOADING else "ok"

    def _died(self, error: BackgroundTaskError) -> None:
        """Wake every ``wait_indexed``: they raise the error instead of waiting for a dead loop;
        and every ``wait_ready`` (False), should the loader be the task that died."""
        self._dead = error
        self._ready.set()
        self._notify()

    async def _check_model(self, encoder: Encoder, report: StartupReport) -> None:
        stored = await self._store.get_meta("embedding_model")
        if stored == encoder.name:
            return
        if stored is not None and same_vectors(stored, encoder.name):
            await self._store.set_embedding_model(encoder.name, keep_vectors=True)  # a name of before
            return
        if stored is not None:
            note = f"embedding model changed from {stored} to {encoder.name}: re-embedding every memory"
            report.notes.append(note)
            log.warning(note)
        await self._store.set_embedding_model(encoder.name)

    async def _open_index(
        self, encoder: Encoder, report: StartupReport, dim: int | None
    ) -> PerUserIndex | None:
        """The index from its file or the stored embeddings; None if it needs the model's
        ``dim`` (nothing stored yet) and ``dim`` is None."""
        owners = dict(await self._store.embedded_ids())
        reason = "no index file"
        if self._index_path.exists():
            try:
                index = await self._faiss.run(
                    PerUserIndex.load, self._index_path, owners, encoder.name, self._database_id
                )
            except IndexCorruptError as exc:
                reason = str(exc)
                log.warning("%s; rebuilding it from the embeddings in SQLite", exc)
            else:
                missing = [mid for mid in owners if index.owner(mid) is None]
                await self._add_stored(index, missing)
                report.index_action = f"loaded {len(index)} vectors" + (
                    f", caught up {len(missing)} from SQLite" if missing else ""
                )
                if index.dropped:
                    # Vectors of forgotten memories: gone from the file now, not at the next save.
                    report.index_action += f", dropped {index.dropped} of forgotten memories"
                    await self._faiss.run(index.save, self._index_path, self._database_id)
                    index.dropped = 0
                self._index_dirty = bool(missing)
                return index
        if owners:  # the stored vectors' size: no model needed to rebuild from them
            stored = await self._store.embeddings_for([next(iter(owners))])
            dim = len(stored[0][2]) // 4 if stored else dim
        if dim is None:
            return None
        index = PerUserIndex(dim, encoder.name)
        await self._add_stored(index, list(owners))
        report.index_action = f"rebuilt from {len(owners)} stored embeddings ({reason})"
        self._index_dirty = True
        return index

    async def _add_stored(self, index: PerUserIndex, ids: list[int]) -> None:
        chunk = 10_000
        for start in range(0, len(ids), chunk):
            rows = await self._store.embeddings_for(ids[start : start + chunk])
            by_user: dict[str, list[tuple[int, bytes]]] = {}
            for mid, uid, blob in rows:
                by_user.setdefault(uid, []).append((mid, blob))
            for uid, items in by_user.items():
                vectors = np.vstack([np.frombuffer(b, dtype=np.float32) for _, b in items])
                await self._faiss.run(index.add, uid, [m for m, _ in items], vectors)

    async def rebuild(self, progress: Callable[[int, int], None] | None = None) -> int:
        """A fresh index from the stored embeddings, swapped in whole once complete."""
        assert self._encoder is not None
        if self._store_dense is not None:  # nothing of it is kept here to rebuild
            embedded = (await self._store.embedding_watermark())[0]
            if progress is not None:
                progress(embedded, embedded)
            return embedded
        async with self._index_lock:
            ids = [mid for mid, _ in await self._store.embedded_ids()]
            # The vectors' size from the index or the stored rows: a rebuild needs no model.
            dim = self._index.dim if self._index is not None else None
            if ids and dim is None:
                stored = await self._store.embeddings_for(ids[:1])
                dim = len(stored[0][2]) // 4 if stored else None
            if dim is None:  # nothing embedded yet, and no model to say the size
                if progress is not None:
                    progress(0, 0)
                return 0
            fresh = PerUserIndex(dim, self._encoder.name)
            chunk = 5_000
            for start in range(0, len(ids), chunk):
                await self._add_stored(fresh, ids[start : start + chunk])
                if progress is not None:
                    progress(min(start + chunk, len(ids)), len(ids))
            if progress is not None and not ids:
                progress(0, 0)
            self._index = fresh
            self._index_dirty = False
            self._last_index_save = time.monotonic()
            await self._faiss.run(fresh.save, self._index_path, self._database_id)
        return len(fresh)

    async def close(self) -> None:
        self._stopping.set()
        loader, self._loader = self._loader, None
        if loader is not None and not loader.done():
            loader.cancel()
            try:
                await loader
            except asyncio.CancelledError:
                log.debug("closed while the model was loading")
        task, self._task = self._task, None
        if task is not None:
            await task  # returns after the batch in flight: the backlog waits for the next start
        if self._storing:
            await asyncio.gather(*self._storing)
        try:
            if self._index is not None and self._index_dirty:
                await self.save_index()
            elif self._erased_unopened:
                await self._erase_unopened()
        finally:
            self._faiss.close()
            if self._owns_encoder and self._encoder is not None:
                await self._encoder.close()

    async def _erase_unopened(self) -> None:
        """The forgotten vectors out of the index file this process never opened."""
        ids, self._erased_unopened = self._erased_unopened, set()
        owners = dict(await self._store.embedded_ids())
        removed = await self._faiss.run(erase_from_file, self._index_path, ids, owners)
        log.info("erased %d vectors of forgotten memories from %s", removed, self._index_path)

    async def save_index(self) -> None:
        index = self._index
        if index is None:
            return
        async with self._index_lock:
            index = self._index or index  # a rebuild may have swapped it meanwhile
            self._index_dirty = False
            erasure, self._erasure_unsaved = self._erasure_unsaved, False
            self._last_index_save = time.monotonic()
            try:
                await self._faiss.run(index.save, self._index_path, self._database_id)
            except StorageError:
                self._index_dirty = True
                self._erasure_unsaved = erasure
                raise

    # -- write-behind embedding --------------------------------------------------------------

    def committed(self, memories: Sequence[Memory]) -> None:
        """Queue freshly committed memories for embedding."""
        for memory in memories:
            self._pending.append(memory)
            self._live[memory.id] = embedding_text(memory)
            if self._touched is not None:
                self._touched.add(memory.id)
            self._pending_by_user[memory.user_id] = self._pending_by_user.get(memory.user_id, 0) + 1
        if memories:
            self._work.set()

    async def _embed_loop(self) -> None:
        backoff = 0.5
        while True:
            if not self._pending:
                self._work.clear()
                await self._maybe_save_index()
                timeout = ERASURE_SAVE_DELAY if self._erasure_unsaved else INDEX_SAVE_INTERVAL
                await wait_any(self._work, self._stopping, timeout=timeout)
                await self._sweep_unembedded()
            if self._stopping.is_set():
                return  # the rest is durable and unembedded: the next start embeds it
            if not self._pending:
                continue
            self._supervisor.fault_point(TaskName.EMBEDDER)
            size = self._settings.retrieval.embed_batch
            batch = self._take_batch(size)
            ok = await self._embed_taken(batch)
            self._in_flight, self._in_flight_ids = [], set()
            if ok:
                backoff = 0.5
                continue
            log.error("retrying the embedding in %.1f s", backoff)
            try:
                await asyncio.wait_for(self._stopping.wait(), backoff)
            except TimeoutError:
                backoff = min(backoff * 2, 30.0)

    async def _sweep_unembedded(self) -> None:
        """A shared store: claim what no process is embedding (a crashed one's rows, after
        their lease), now and then while idle."""
        if not self._store.shared or time.monotonic() - self._last_sweep < SWEEP_INTERVAL:
            return
        self._last_sweep = time.monotonic()
        try:
            claimed = await self._store.unembedded()
        except StorageError as exc:
            log.warning("looking for memories left unembedded failed (retried later): %s", exc)
            return
        self.committed([m for m in claimed if m.id not in self._live])

    async def _embed_taken(self, batch: list[Memory], vectors: Vectors | None = None) -> bool:
        """Embed memories taken off the queue, or store the ``vectors`` a retrieve made for
        them (searchable before their commit: the retrieve waits for the index, not for the
        writer); on failure they go back to the queue's front (False)."""
        started = time.perf_counter()
        background = vectors is None
        try:
            if vectors is None:
                assert self._encoder is not None
                vectors = await self._encoder.encode([embedding_text(m) for m in batch])
            # A retrieve's own vectors go into the per-process index before their commit; where
            # the vectors are searched in the database, the commit is what makes them found.
            index_first = not background and self._index is not None
            await self._save_vectors(batch, vectors, index_first=index_first)
        except (EncoderError, StorageError) as exc:
            self._embed_error = str(exc)
            log.error("embedding %d memories failed: %s", len(batch), exc)
            self._pending.extendleft(reversed(batch))
            self._notify()
            return False
        finally:
            self._urgent_ids.difference_update(m.id for m in batch)
        if background:  # the embedder's own rate: model and storing, not a retrieve's storing
            self._embed_seconds += time.perf_counter() - started
            self._embed_texts += len(batch)
        self._embed_error = None
        for memory in batch:
            left = self._pending_by_user[memory.user_id] - 1
            if left:
                self._pending_by_user[memory.user_id] = left
            else:
                del self._pending_by_user[memory.user_id]
        self._notify()
        return True

    def _take_batch(self, size: int) -> list[Memory]:
        """The oldest pending memories; in flight until embedded (a retrieve takes its user's
        own out of the queue itself)."""
        batch: list[Memory] = []
        while len(batch) < size and self._pending:
            batch.append(self._pending.popleft())
        self._in_flight = batch
        self._in_flight_ids = {m.id for m in batch}
        return batch

    async def _save_vectors(
        self, batch: list[Memory], vectors: Vectors, *, index_first: bool = False
    ) -> None:
        """Store the vectors of memories still live, in SQLite and in the index.

        The commit runs outside the index lock (a retrieve storing its user's vectors would
        otherwise wait for the embedder's commit too): a memory forgotten meanwhile is no
        longer live when the lock is taken, so its vector never reaches the index, and its
        row is gone, so the UPDATE changed nothing; a rebuild meanwhile already holds the
        committed vectors, and ``add`` skips ids it has. ``index_first`` (a retrieve's own
        memories) adds them to the index before the commit, and takes them out again if the
        commit fails; an index file saved between the two holds a vector SQLite lacks, which
        the next start drops and embeds again.
        """
        ids = [m.id for m in batch]
        rows = [(m, vectors[i]) for i, m in enumerate(batch) if self._current(m)]
        if index_first:
            indexed = await self._index_rows(rows)
            self.embedded += len(indexed)  # searchable now
            self._urgent_ids.difference_update(ids)
            self._notify()
            rows = [(m, v) for m, v in rows if self._current(m)]  # an edit began meanwhile
        try:
            if rows:
                await self._store_vectors(rows)
        except StorageError:
            if index_first:
                self.embedded -= len(indexed)
                async with self._index_lock:
                    assert self._index is not None
                    await self._faiss.run(self._index.remove, ids)
            raise
        if not index_first:
            self.embedded += len(await self._index_rows(rows))
        for memory in batch:  # done with this text; a newer one (an edit's) stays pending
            if self._current(memory):
                del self._live[memory.id]

    def _current(self, memory: Memory) -> bool:
        """Whether a vector made from ``memory`` may be installed: it is still live (not
        forgotten, not being edited) and its text is the one the memory has now."""
        return self._live.get(memory.id) == embedding_text(memory)

    async def _index_rows(self, rows: list[tuple[Memory, Vectors]]) -> list[tuple[Memory, Vectors]]:
        """Add the rows of memories still live to the index; those added."""
        async with self._index_lock:
            rows = [(m, v) for m, v in rows if self._current(m)]
            if rows and self._index is not None:
                await self._faiss.run(self._add_rows, self._index, rows)
                self._index_dirty = True
        return rows

    async def _store_vectors(self, rows: list[tuple[Memory, Vectors]]) -> None:
        """One unit per user (a unit names the owner of every id it writes), one commit."""
        by_user: dict[str, list[tuple[int, bytes]]] = {}
        for memory, vector in rows:
            by_user.setdefault(memory.user_id, []).append((memory.id, vector.tobytes()))
        await asyncio.gather(
            *(self._store.submit(Unit(uid, embeddings=tuple(pairs))) for uid, pairs in by_user.items())
        )

    @staticmethod
    def _add_rows(index: PerUserIndex, rows: list[tuple[Memory, Vectors]]) -> None:
        by_user: dict[str, list[tuple[Memory, Vectors]]] = {}
        for memory, vector in rows:
            by_user.setdefault(memory.user_id, []).append((memory, vector))
        for uid, items in by_user.items():
            index.add(uid, [m.id for m, _ in items], np.vstack([v for _, v in items]))

    def _notify(self) -> None:
        done, self._progress = self._progress, asyncio.Event()
        done.set()

    async def _maybe_save_index(self) -> None:
        due = ERASURE_SAVE_DELAY if self._erasure_unsaved else INDEX_SAVE_INTERVAL
        if self._index_dirty and time.monotonic() - self._last_index_save >= due:
            try:
                await self.save_index()
            except StorageError as exc:
                log.error("saving the index failed (it is rebuilt from SQLite on start): %s", exc)

    def _take_own(self, user_id: str, size: int) -> list[Memory]:
        """The user's newest pending memories (``size`` at most), out of the embedder's queue:
        a retrieve embeds them in its own model call."""
        if not self._pending_by_user.get(user_id):
            return []
        own: list[Memory] = []
        rest: deque[Memory] = deque()
        for memory in reversed(self._pending):
            if memory.user_id == user_id and len(own) < size:
                own.append(memory)
            else:
                rest.appendleft(memory)
        self._pending = rest
        own.reverse()
        self._urgent_ids.update(m.id for m in own)
        return own

    async def _embed_for_query(self, user_id: str, query: str, unembedded: set[int]) -> Vectors:
        """The query's vector, from one urgent model call that also embeds the user's pending
        memories; their place in the index (not their commit), and the user's memories in the
        embedder's batch in flight, are waited for ``pending_wait_ms`` at most; what is still
        unembedded goes into ``unembedded``."""
        assert self._encoder is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.retrieval.pending_wait_ms / 1000
        own = self._take_own(user_id, self._settings.retrieval.own_pending_per_query)
        try:
            vectors = await encode_urgent(self._encoder, [query, *(embedding_text(m) for m in own)])
        except BaseException:  # cancelled or failed: the embedder embeds them
            self._urgent_ids.difference_update(m.id for m in own)
            self._pending.extend(own)
            self._work.set()
            raise
        if own:  # a task: the commit is not waited for, and a cancelled retrieve cannot cut it
            storing = asyncio.ensure_future(self._embed_taken(own, vectors[1:]))
            self._storing.add(storing)
            storing.add_done_callback(self._storing.discard)
        mine = {m.id for m in own} | {m.id for m in self._in_flight if m.user_id == user_id}
        self._urgent[user_id] = self._urgent.get(user_id, 0) + 1
        try:
            while mine & (self._urgent_ids | self._in_flight_ids) and self._embed_error is None:
                if self._dead is not None:
                    raise self._dead.with_traceback(None)
                if not await self._wait_progress(deadline - loop.time()):
                    log.debug("user %s: pending memories rank lexically after the wait", user_id)
                    break
        finally:
            left = self._urgent.pop(user_id) - 1
            if left:
                self._urgent[user_id] = left
        if self._pending_by_user.get(user_id):
            unembedded.update(m.id for m in self._pending if m.user_id == user_id)
            unembedded.update(mine & (self._urgent_ids | self._in_flight_ids))
        query_vector: Vectors = vectors[0]
        return query_vector

    async def _wait_progress(self, timeout: float) -> bool:
        """Until the embedder or a retrieve stored a batch (True) or ``timeout`` passed."""
        if timeout <= 0:
            return False
        try:
            async with asyncio.timeout(timeout):
                await self._progress.wait()
        except TimeoutError:
            return False
        return True

    @contextlib.contextmanager
    def rewriting(self, memories: Sequence[Memory]) -> Iterator[set[int]]:
        """While an edit of ``memories`` commits, no vector of their text is stored or indexed.

        An embedding in flight (the embedder's batch, a retrieve's own) may land at any moment
        of the edit, even between its commit and the ``committed`` of the new text, and its
        vector is of the old text: unmarked from the start, such a vector is dropped. The
        caller adds to the set yielded the ids whose text the commit replaced (it queues their
        new text itself); on leaving, every other memory that was pending (its text did not
        change, or the edit failed) is queued again as it is: its embedding may have been
        dropped meanwhile.
        """
        held = {m.id for m in memories if self._live.pop(m.id, None) is not None}
        if self._touched is not None:
            self._touched.update(m.id for m in memories)
        replaced: set[int] = set()
        try:
            yield replaced
        finally:
            self.committed(
                [m for m in memories if m.id in held and m.id not in replaced and m.id not in self._live]
            )

    def users_changed(self, user_ids: Sequence[str] | None) -> None:
        """The vectors of ``user_ids`` changed (a forget or an edit, here or in another
        process; None: anyone's may have): their cached shards are dropped."""
        if self._store_dense is not None:
            self._store_dense.drop(user_ids)

    async def forget(self, ids: Sequence[int]) -> None:
        """Drop the vectors of forgotten memories; the file follows within ``ERASURE_SAVE_DELAY``.

        The index is read under the index lock: a rebuild swaps in a new one while holding it,
        so a forget waiting for the rebuild removes the ids from the index that is current.
        """
        if not ids:
            return
        if self._touched is not None:
            self._touched.update(ids)
        async with self._index_lock:
            for memory_id in ids:
                self._live.pop(memory_id, None)
            index = self._index
            if index is None:
                if not self._index_wanted() and self._store_dense is None:
                    self._erased_unopened.update(ids)
                return
            removed = await self._faiss.run(index.remove, ids)
            if removed:
                self._index_dirty = True
                self._erasure_unsaved = True
                self._work.set()

    # -- retrieval ---------------------------------------------------------------------------

    async def retrieve(
        self,
        user_id: str,
        query: str,
        k: int,
        kinds: frozenset[str] | None,
        scopes: frozenset[str] | None = None,
    ) -> list[ScoredMemory]:
        assert self._encoder is not None
        if self._dead is not None:
            raise self._dead.with_traceback(None)
        settings = self._settings
        dense = await self.wait_ready(settings.encoder.ready_wait_ms / 1000)
        unembedded: set[int] = set()

        async def embed_query() -> Vectors:
            return await self._embed_for_query(user_id, query, unembedded)

        index = (self._store_dense or self._index) if dense else None
        results = await self._retriever.retrieve(index, user_id, query, embed_query, k, kinds, scopes)
        if not dense:
            return [dataclasses.replace(r, rankers=(*r.rankers, LEXICAL_ONLY)) for r in results]
        return [
            dataclasses.replace(r, rankers=(*r.rankers, NOT_EMBEDDED)) if r.memory.id in unembedded else r
            for r in results
        ]

    async def stats(self) -> dict[str, Any]:
        index = self._index
        vectors, users = (len(index), index.users()) if index is not None else (0, 0)
        if self._store_dense is not None:  # the vectors live in the database
            owners = await self._store.embedded_ids()
            vectors, users = len(owners), len({uid for _, uid in owners})
        encoder_stats = self._encoder.stats() if self._encoder is not None else {}
        return {
            "encoder_state": str(self.encoder_state),
            "encoder_error": self.encoder_error,
            "encoder_load_seconds": round(self.load_seconds, 3) if self.load_seconds is not None else None,
            "pending_embeddings": len(self._pending) + len(self._in_flight_ids) + len(self._urgent_ids),
            "embedder_texts_per_second": (
                round(self._embed_texts / self._embed_seconds, 1) if self._embed_seconds > 0 else None
            ),
            "embedder_waiting_users": len(self._urgent),
            "embedded_since_start": self.embedded,
            "embedding_error": self._embed_error,
            "index_vectors": vectors,
            "index_users": users,
            **(
                {
                    "shard_vectors": self._store_dense.cached_vectors,
                    "shard_loads": self._store_dense.shard_loads,
                }
                if self._store_dense is not None
                else {}
            ),
            "index_path": str(self._index_path),
            **encoder_stats,
        }
