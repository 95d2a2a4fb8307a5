"""Semantic memory: write-behind embedding, the per-user FAISS index, and hybrid retrieval.

A memory's text is committed first (the lexical ranker finds it at once); its embedding is
made just after, in batches, so writes are not bound by the model's speed. A retrieve for a
user first waits until that user's pending embeddings are indexed: read your own writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from memory.encoder import Encoder, Vectors, build_encoder
from memory.errors import BackgroundTaskError, EncoderError, IndexCorruptError, StorageError
from memory.index import PerUserIndex
from memory.locks import LockLevel, OrderedLock
from memory.records import Memory, ScoredMemory
from memory.recovery import StartupReport
from memory.retrieval import Retriever
from memory.settings import Settings
from memory.store import SqliteStore, embedding_statement
from memory.supervisor import Supervisor, TaskName
from memory.workers import SingleThreadWorker, wait_any

log = logging.getLogger(__name__)
INDEX_SAVE_INTERVAL = 30.0
# After an erasure the index file is rewritten this soon, not at the usual interval: a forgotten
# person's vectors must not stay on disk (a start also drops any it finds there).
ERASURE_SAVE_DELAY = 5.0


def embedding_text(memory: Memory) -> str:
    """What the model sees of a memory: its own text (context words measured worse here)."""
    return memory.text


class SemanticMemory:
    def __init__(
        self,
        settings: Settings,
        store: SqliteStore,
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
        self._retriever = Retriever(store, settings.retrieval, self._faiss.run)
        self._pending: deque[Memory] = deque()
        self._live: set[int] = set()
        self._pending_by_user: dict[str, int] = {}
        self._work = asyncio.Event()
        self._stopping = asyncio.Event()
        self._progress = asyncio.Event()
        self._embed_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._index_dirty = False
        self._erasure_unsaved = False
        self._database_id = ""
        self._last_index_save = time.monotonic()
        self.embedded = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, report: StartupReport) -> None:
        if self._encoder is None:
            self._encoder = await build_encoder(
                self._settings.encoder, self._index_path.parent, self._supervisor
            )
        encoder = self._encoder
        self._database_id = await self._store.database_id()
        await self._check_model(encoder, report)
        self._index = await self._open_index(encoder, report)
        pending = await self._store.unembedded()
        report.embeddings_pending = len(pending)
        self.committed(pending)
        self._task = self._supervisor.spawn(TaskName.EMBEDDER, self._embed_loop, self._died)

    def _died(self, error: BackgroundTaskError) -> None:
        """Wake every ``wait_indexed``: they raise the error instead of waiting for a dead loop."""
        self._dead = error
        self._notify()

    async def _check_model(self, encoder: Encoder, report: StartupReport) -> None:
        stored = await self._store.get_meta("embedding_model")
        if stored == encoder.name:
            return
        if stored is not None:
            note = f"embedding model changed from {stored} to {encoder.name}: re-embedding every memory"
            report.notes.append(note)
            log.warning(note)
        await self._store.commit(self._store.model_change_statements(encoder.name))

    async def _open_index(self, encoder: Encoder, report: StartupReport) -> PerUserIndex:
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
        index = PerUserIndex(encoder.dim, encoder.name)
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
        async with self._index_lock:
            ids = [mid for mid, _ in await self._store.embedded_ids()]
            fresh = PerUserIndex(self._encoder.dim, self._encoder.name)
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
        task, self._task = self._task, None
        if task is not None:
            await task
        try:
            if self._index is not None and self._index_dirty:
                await self.save_index()
        finally:
            self._faiss.close()
            if self._owns_encoder and self._encoder is not None:
                await self._encoder.close()

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
            self._live.add(memory.id)
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
            if self._stopping.is_set() and (not self._pending or self._embed_error is not None):
                return  # drained (or the encoder is failing: the rest is embedded on next start)
            if not self._pending:
                continue
            self._supervisor.fault_point(TaskName.EMBEDDER)
            size = self._settings.retrieval.embed_batch
            batch = [self._pending.popleft() for _ in range(min(size, len(self._pending)))]
            try:
                await self._embed(batch)
            except (EncoderError, StorageError) as exc:
                self._embed_error = str(exc)
                log.error("embedding %d memories failed, retrying in %.1f s: %s", len(batch), backoff, exc)
                self._pending.extendleft(reversed(batch))
                self._notify()
                try:
                    await asyncio.wait_for(self._stopping.wait(), backoff)
                except TimeoutError:
                    backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            self._embed_error = None
            for memory in batch:
                left = self._pending_by_user[memory.user_id] - 1
                if left:
                    self._pending_by_user[memory.user_id] = left
                else:
                    del self._pending_by_user[memory.user_id]
            self._notify()

    async def _embed(self, batch: list[Memory]) -> None:
        assert self._encoder is not None and self._index is not None
        vectors = await self._encoder.encode([embedding_text(m) for m in batch])
        async with self._index_lock:
            rows = [(m, vectors[i]) for i, m in enumerate(batch) if m.id in self._live]
            if rows:
                await self._store.commit([embedding_statement(m.id, v.tobytes()) for m, v in rows])
                await self._faiss.run(self._add_rows, self._index, rows)
                self._index_dirty = True
            self._live.difference_update(m.id for m in batch)
            self.embedded += len(rows)

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

    async def wait_indexed(self, user_id: str) -> None:
        """Until the user's committed memories are searchable (or the embedder is failing)."""
        while (
            self._pending_by_user.get(user_id) and self._embed_error is None and not self._stopping.is_set()
        ):
            if self._dead is not None:
                raise self._dead.with_traceback(None)
            await self._progress.wait()

    async def forget(self, ids: Sequence[int]) -> None:
        """Drop the vectors of forgotten memories; the file follows within ``ERASURE_SAVE_DELAY``.

        The index is read under the index lock: a rebuild swaps in a new one while holding it,
        so a forget waiting for the rebuild removes the ids from the index that is current.
        """
        if not ids:
            return
        async with self._index_lock:
            self._live.difference_update(ids)
            index = self._index
            if index is None:
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
        assert self._encoder is not None and self._index is not None
        await self.wait_indexed(user_id)
        encoder = self._encoder

        async def embed_query() -> Vectors:
            row: Vectors = (await encoder.encode([query]))[0]
            return row

        return await self._retriever.retrieve(self._index, user_id, query, embed_query, k, kinds, scopes)

    async def stats(self) -> dict[str, Any]:
        index = self._index
        encoder_stats = self._encoder.stats() if self._encoder is not None else {}
        return {
            "pending_embeddings": len(self._pending),
            "embedded_since_start": self.embedded,
            "embedding_error": self._embed_error,
            "index_vectors": len(index) if index is not None else 0,
            "index_users": index.users() if index is not None else 0,
            "index_path": str(self._index_path),
            **encoder_stats,
        }
