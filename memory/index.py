"""FAISS vectors, one shard per user, so a search never touches another user's vectors.

Choice by measurement (benchmarks/bench_retrieval.py: 1,000 users x 100 vectors, dim 384, on
a busy 2-core machine): a per-user ``IndexIDMap2(IndexFlatIP)`` answers a top-10 in 0.019 ms
p50 / 0.028 ms p99 (top-50: 0.029 / 0.047) and always returns min(k, the user's count);
one global index with an ``IDSelectorBatch`` of the user's ids took 0.31 / 8.0 ms (it scans
every user's vectors, so it grows with all data), with an ``IDSelectorArray`` 8 / 48 ms; and
over-fetching the global top 50 then keeping the user's kept 0.05 of k=10 on average: the
bug peers ship. Shards cost a few hundred bytes each.

On disk the shards are saved as one ``IndexIDMap2`` (ids are global memory ids) plus a JSON
watermark (count, highest id, dim, model), both written atomically. SQLite holds every
embedding, so a missing, unreadable or stale file is rebuilt or caught up without the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from memory.atomic import atomic_write, discard_temp, fsync_dir, temp_path
from memory.errors import IndexCorruptError, StorageError
from memory.models import same_vectors

log = logging.getLogger(__name__)


def _faiss() -> Any:
    """faiss, imported at first use: 30 ms of ``import memory`` that the commands which never
    touch the index (memory-admin forget, rollback, export, ...) need not pay."""
    import faiss

    return faiss


Ids = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Watermark:
    """What an index file claims to hold, and whose it is.

    ``database_id`` names the database the vectors were made for (a copied or rebuilt database
    has another, so its reused ids never pick up these vectors); ``checksum`` covers every
    (id, owner) pair, so vectors filed under the wrong user are caught even within it.
    """

    count: int
    max_id: int
    dim: int
    model: str
    database_id: str = ""
    checksum: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "count": self.count,
                "max_id": self.max_id,
                "dim": self.dim,
                "model": self.model,
                "database_id": self.database_id,
                "checksum": self.checksum,
            }
        )


def owners_checksum(pairs: Iterable[tuple[int, str]]) -> str:
    """A digest of (memory id, owner) pairs, independent of their order."""
    digest = hashlib.blake2b(digest_size=16)
    for memory_id, owner in sorted(pairs):
        digest.update(f"{memory_id}\x1f{owner}\x1e".encode())
    return digest.hexdigest()


# Shards up to this many vectors are scored whole by ``search_scored`` (a 1,000 x 384 product
# takes about 20 microseconds).
SCORE_ALL_LIMIT = 1_000


def _new_shard(dim: int) -> Any:
    return _faiss().IndexIDMap2(_faiss().IndexFlatIP(dim))


class PerUserIndex:
    """Not thread-safe on purpose: every call runs on the one FAISS worker thread."""

    def __init__(self, dim: int, model: str) -> None:
        self.dim = dim
        self.model = model
        self._shards: dict[str, Any] = {}
        self._owner: dict[int, str] = {}
        # Vectors of memories gone from the database, left out when loading: the file still
        # holds them until it is saved again.
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._owner)

    @property
    def max_id(self) -> int:
        return max(self._owner, default=0)

    def users(self) -> int:
        return len(self._shards)

    def owner(self, memory_id: int) -> str | None:
        return self._owner.get(memory_id)

    def count(self, user_id: str) -> int:
        shard = self._shards.get(user_id)
        return 0 if shard is None else int(shard.ntotal)

    def add(self, user_id: str, ids: Sequence[int], vectors: npt.NDArray[np.float32]) -> None:
        """Add the vectors of ids not held yet; an id given twice in one call is added once.

        Why once: FAISS keeps a repeated id as two entries, while the owner map counts it
        once, so the saved index would hold one vector more than its watermark says and the
        next load (and ``verify``) would refuse the file."""
        fresh: list[int] = []
        seen: set[int] = set()
        for i, mid in enumerate(ids):
            if mid not in self._owner and mid not in seen:
                seen.add(mid)
                fresh.append(i)
        if not fresh:
            return
        shard = self._shards.get(user_id)
        if shard is None:
            shard = self._shards[user_id] = _new_shard(self.dim)
        id_array = np.asarray([ids[i] for i in fresh], dtype=np.int64)
        shard.add_with_ids(np.ascontiguousarray(vectors[fresh], dtype=np.float32), id_array)
        for mid in id_array.tolist():
            self._owner[mid] = user_id

    def remove(self, ids: Iterable[int]) -> int:
        by_user: dict[str, list[int]] = {}
        for mid in ids:
            user = self._owner.pop(mid, None)
            if user is not None:
                by_user.setdefault(user, []).append(mid)
        for user, user_ids in by_user.items():
            shard = self._shards[user]
            shard.remove_ids(_faiss().IDSelectorBatch(np.asarray(user_ids, dtype=np.int64)))
            if shard.ntotal == 0:
                del self._shards[user]
        return sum(len(v) for v in by_user.values())

    def search(
        self,
        user_id: str,
        query: npt.NDArray[np.float32],
        k: int,
        allowed: AbstractSet[int] | None = None,
    ) -> list[tuple[int, float]]:
        """(memory id, inner product) of the user's nearest vectors, best first; with
        ``allowed``, FAISS itself skips every other id (an IDSelector), so k allowed are found."""
        shard = self._shards.get(user_id)
        if shard is None or k <= 0 or (allowed is not None and not allowed):
            return []
        k = min(k, int(shard.ntotal) if allowed is None else len(allowed))
        x = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        if allowed is None:
            scores, ids = shard.search(x, k)
        else:
            selector = _faiss().IDSelectorBatch(np.asarray(sorted(allowed), dtype=np.int64))
            params = _faiss().SearchParameters()
            params.sel = selector
            scores, ids = shard.search(x, k, params=params)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def search_with_floor(
        self,
        user_id: str,
        query: npt.NDArray[np.float32],
        k: int,
        allowed: AbstractSet[int] | None = None,
    ) -> tuple[list[tuple[int, float]], float]:
        """The top k and the lowest inner product (the top of the negated query), of ``allowed``."""
        top = self.search(user_id, query, k, allowed)
        if not top:
            return [], 0.0
        worst = self.search(user_id, -query, 1, allowed)
        return top, -worst[0][1]

    def search_scored(
        self,
        user_id: str,
        query: npt.NDArray[np.float32],
        k: int,
        allowed: AbstractSet[int] | None = None,
    ) -> tuple[list[tuple[int, float]], float, dict[int, float]]:
        """The top k, the lowest inner product, and every inner product known, over the user's
        vectors (only those whose id is in ``allowed``, when given: a scoped search).

        A shard of up to ``SCORE_ALL_LIMIT`` vectors is scored whole with one matrix product
        over FAISS's own storage (no copy): as fast as its search, and the retriever then needs
        no second call for the candidates the other rankers bring. Larger shards are searched.
        The scope filter happens before the top k is taken, never after.
        """
        shard = self._shards.get(user_id)
        if shard is None or k <= 0:
            return [], 0.0, {}
        n = int(shard.ntotal)
        if n > SCORE_ALL_LIMIT:
            top, floor = self.search_with_floor(user_id, query, k, allowed)
            return top, floor, dict(top)
        flat: Any = _faiss().downcast_index(shard.index)  # an IndexFlatIP; its stub says Index
        vectors = _faiss().rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)
        ids = _faiss().vector_to_array(shard.id_map)
        if allowed is not None:
            keep = np.isin(ids, np.fromiter(allowed, dtype=np.int64, count=len(allowed)))
            vectors, ids = vectors[keep], ids[keep]
            if not len(ids):
                return [], 0.0, {}
        scores = vectors @ np.asarray(query, dtype=np.float32).reshape(-1)
        id_list = ids.tolist()
        best = np.argsort(-scores, kind="stable")[:k].tolist()
        every = dict(zip(id_list, scores.tolist(), strict=True))
        return [(id_list[i], every[id_list[i]]) for i in best], float(scores.min()), every

    def scores_for(
        self,
        user_id: str,
        ids: Sequence[int],
        query: npt.NDArray[np.float32],
        allowed: AbstractSet[int] | None = None,
    ) -> dict[int, float]:
        """Inner products of the given memories of this user (others, and those not in
        ``allowed`` when given, are left out)."""
        shard = self._shards.get(user_id)
        mine = [mid for mid in ids if self._owner.get(mid) == user_id and (allowed is None or mid in allowed)]
        if shard is None or not mine:
            return {}
        vectors = np.vstack([shard.reconstruct(mid) for mid in mine])
        scores = vectors @ query.astype(np.float32)
        return {mid: float(score) for mid, score in zip(mine, scores.tolist(), strict=True)}

    def vectors_of(self, user_id: str, ids: Sequence[int]) -> npt.NDArray[np.float32]:
        """The stored vectors of these memories of this user, one row each in order; a row of
        NaN for a memory not in the user's shard (another user's, or not embedded yet)."""
        out = np.full((len(ids), self.dim), np.nan, dtype=np.float32)
        shard = self._shards.get(user_id)
        if shard is None:
            return out
        rows = [row for row, mid in enumerate(ids) if self._owner.get(mid) == user_id]
        if rows:  # one call for all (60 single reconstructs cost 0.35 ms, this 0.014)
            out[rows] = shard.reconstruct_batch(np.asarray([ids[row] for row in rows], dtype=np.int64))
        return out

    def watermark(self, database_id: str = "") -> Watermark:
        checksum = owners_checksum(self._owner.items())
        return Watermark(len(self._owner), self.max_id, self.dim, self.model, database_id, checksum)

    # -- persistence -------------------------------------------------------------------------

    def save(self, path: Path, database_id: str = "") -> Watermark:
        """Write every shard as one index, then its watermark; each file atomically."""
        merged = _new_shard(self.dim)
        for shard in self._shards.values():
            n = int(shard.ntotal)
            if n:
                vectors = _stored_vectors(shard, self.dim)
                merged.add_with_ids(vectors, _faiss().vector_to_array(shard.id_map).astype(np.int64))
        mark = self.watermark(database_id)
        _save_with_watermark(path, merged, mark)
        return mark

    @classmethod
    def load(
        cls, path: Path, owners: dict[int, str], model: str, database_id: str | None = None
    ) -> PerUserIndex:
        """Read ``path``; ``owners`` (memory id -> user, from SQLite) splits it into shards.

        With ``database_id``, an index made for another database is refused, and so is one
        whose ids belong to other users than the database says: either would hand one user's
        vectors to another's memories.
        """
        try:
            mark_data = json.loads(watermark_path(path).read_text())
            mark = Watermark(
                int(mark_data["count"]),
                int(mark_data["max_id"]),
                int(mark_data["dim"]),
                str(mark_data["model"]),
                str(mark_data.get("database_id", "")),
                str(mark_data.get("checksum", "")),
            )
            merged: Any = _read_index(path)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise IndexCorruptError(f"index {path} is unreadable: {exc}") from exc
        if int(merged.ntotal) != mark.count or merged.d != mark.dim:
            raise IndexCorruptError(
                f"index {path} holds {merged.ntotal} vectors of dim {merged.d}, its watermark "
                f"says {mark.count} of dim {mark.dim}"
            )
        if not same_vectors(mark.model, model):
            raise IndexCorruptError(f"index {path} was built with {mark.model}, not {model}")
        if database_id is not None and mark.database_id != database_id:
            raise IndexCorruptError(
                f"index {path} was made for another database ({mark.database_id or 'unnamed'}, "
                f"this one is {database_id})"
            )
        index = cls(mark.dim, model)
        n = int(merged.ntotal)
        if n:
            ids = _faiss().vector_to_array(merged.id_map).astype(np.int64)
            vectors = _stored_vectors(merged, mark.dim)
            by_user: dict[str, list[int]] = {}
            for row, mid in enumerate(ids.tolist()):
                user = owners.get(mid)
                if user is not None:  # a memory deleted after the save: leave it out
                    by_user.setdefault(user, []).append(row)
                else:
                    index.dropped += 1
            for user, rows in by_user.items():
                index.add(user, ids[rows].tolist(), vectors[rows])
        if database_id is not None and not index.dropped and index.watermark().checksum != mark.checksum:
            raise IndexCorruptError(f"index {path} files vectors under other users than its database does")
        return index


def watermark_path(path: Path) -> Path:
    return path.with_name(path.name + ".watermark.json")


# FAISS's own file reader and writer, not (de)serialize_index through bytes in memory: at 82k
# vectors (126 MB) serialize_index took 1.2 s against 0.2 s for write_index, deserialize 0.45 s
# against 0.17 s for read_index; and the vectors are read in place, not copied by reconstruct_n
# (0.54 s). ``_write_index`` is ``atomic_write`` with FAISS writing the temp file.


def _read_index(path: Path) -> Any:
    if not path.is_file():  # read_index would name it only in a C++ message
        raise FileNotFoundError(f"no such file: {path}")
    return _faiss().read_index(str(path))


def _save_with_watermark(path: Path, merged: Any, mark: Watermark) -> None:
    """The index file, then its watermark (each written atomically): a crash between them
    leaves a watermark that no longer matches, which the next load rebuilds from."""
    try:
        _write_index(path, merged)
        atomic_write(watermark_path(path), mark.to_json().encode())
    except OSError as exc:
        raise StorageError(f"could not save the index {path}: {exc}", path) from exc


def _stored_vectors(id_map: Any, dim: int) -> npt.NDArray[np.float32]:
    """The vectors of an ``IndexIDMap2(IndexFlatIP)``, in id-map order: a view, valid while it lives."""
    flat: Any = _faiss().downcast_index(id_map.index)
    n = int(id_map.ntotal)
    vectors: npt.NDArray[np.float32] = _faiss().rev_swig_ptr(flat.get_xb(), n * dim).reshape(n, dim)
    return vectors


def _write_index(path: Path, index: Any) -> None:
    tmp = temp_path(path)
    try:
        try:
            _faiss().write_index(index, str(tmp))
        except RuntimeError as exc:  # FAISS's C++ I/O error: a full disk, a folder gone
            raise OSError(f"FAISS could not write {tmp}: {exc}") from exc
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
        fsync_dir(path.parent)
    finally:
        discard_temp(tmp)


def erase_from_file(path: Path, ids: Iterable[int], owners: Mapping[int, str]) -> int:
    """Take the vectors of ``ids`` out of the index file as it is, without splitting it into
    shards (a forget in a process that never searches: ``memory-admin forget`` erased 100
    vectors by loading and saving all 82k at 100k memories, 2.5 s); returns how many it held.

    ``owners`` (memory id -> user, from SQLite after the forget) makes the new watermark's
    checksum. A file that cannot be read is deleted instead, with its watermark: what it held
    is gone either way, and the next start rebuilds it from the stored embeddings.
    """
    if not path.exists():
        return 0
    try:
        mark = json.loads(watermark_path(path).read_text())
        merged: Any = _read_index(path)
        before = int(merged.ntotal)
        gone = np.asarray(sorted(set(ids)), dtype=np.int64)
        removed = int(merged.remove_ids(_faiss().IDSelectorBatch(gone))) if len(gone) else 0
        if not removed:
            return 0
        left = _faiss().vector_to_array(merged.id_map).astype(np.int64).tolist()
        pairs = [(mid, owners[mid]) for mid in left if mid in owners]
        fresh = Watermark(
            before - removed,
            max(left, default=0),
            int(merged.d),
            str(mark["model"]),
            str(mark.get("database_id", "")),
            owners_checksum(pairs),
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        log.warning("index %s is unreadable (%s): deleted, to be rebuilt at the next start", path, exc)
        for file in (path, watermark_path(path)):
            try:
                file.unlink(missing_ok=True)
            except OSError as gone_exc:
                raise StorageError(f"could not delete the index {file}: {gone_exc}", file) from gone_exc
        return 0
    _save_with_watermark(path, merged, fresh)
    return removed
