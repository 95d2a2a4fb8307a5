"""The lexical document and BM25 of the PostgreSQL backend, exactly as SQLite's FTS5 makes them.

Both backends must rank the same (``NewMemory``): the words are ``lexical.user_terms``, stemmed
by FTS5's own ``porter ascii`` tokenizer (PostgreSQL's English stemmer is Snowball's Porter2,
which stems differently, and the per-user key in front of each word changes what Porter does
with a leading ``y``), here run in an in-memory SQLite database. BM25 is FTS5's formula
(k1 = 1.2, b = 0.75, the table's average document length, the body weighted 1 and the context
``context_weight``) re-weighted with the user's own IDF by ``lexical.user_bm25``, the function
SQLite's search uses; the same inputs make the same scores.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from memory.lexical import idf, user_bm25, user_terms

K1 = 1.2
B = 0.75
_STEM_CACHE_LIMIT = 200_000


class Stemmer:
    """FTS5's tokenizer on an in-memory table: a document in, its stemmed tokens out in order,
    with the stems of up to ``limit`` tokens remembered."""

    def __init__(self, limit: int = _STEM_CACHE_LIMIT) -> None:
        self._db: sqlite3.Connection | None = None
        self._cache: dict[str, str] = {}
        self._limit = limit

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(":memory:", check_same_thread=False)
            db.execute("CREATE VIRTUAL TABLE doc USING fts5(t, tokenize = 'porter ascii')")
            db.execute("CREATE VIRTUAL TABLE doc_terms USING fts5vocab(doc, 'instance')")
            self._db = db
        return self._db

    def stems(self, tokens: Sequence[str]) -> list[str]:
        if len(self._cache) + len(tokens) > self._limit:
            self._cache.clear()  # before looking up: every token asked for must be stemmed now
        found = {t: self._cache.get(t) for t in tokens}
        missing = [t for t, stem in found.items() if stem is None]
        if missing:
            db = self._conn()
            # One token per word (user_terms' tokens are [0-9a-z]), so offset i is missing[i].
            db.execute("INSERT INTO doc (rowid, t) VALUES (1, ?)", (" ".join(missing),))
            rows = db.execute("SELECT offset, term FROM doc_terms").fetchall()
            db.execute("DELETE FROM doc")
            for offset, term in rows:
                found[missing[offset]] = self._cache[missing[offset]] = term
        return [found[t] or "" for t in tokens]


_STEMMER = Stemmer()


def document_terms(user_id: str, text: str) -> list[str]:
    """The stemmed per-user terms FTS5 would index for ``text``, in order."""
    tokens = user_terms(user_id, text).split()
    return _STEMMER.stems(tokens) if tokens else []


def query_stems(terms: Sequence[str]) -> list[str]:
    """The stem of each query term (``lexical.query_terms``), as FTS5 would MATCH it."""
    return _STEMMER.stems(list(terms)) if terms else []


def tsquery(stems: Iterable[str]) -> str:
    """Any of ``stems`` (they are [0-9a-z] only, so quoting is all they need)."""
    return " | ".join(f"'{s}'" for s in dict.fromkeys(stems))


@dataclass(frozen=True, slots=True)
class Document:
    """One of the user's memories that holds a query term, as the search reads it."""

    memory_id: int
    kind: str
    allowed: bool  # said in a scope the search may see
    body: Sequence[str]
    context: Sequence[str]


def bm25_scores(
    stems: Sequence[str],
    documents: Sequence[Document],
    user_rows: int,
    table_rows: int,
    table_tokens: int,
    context_weight: float,
) -> dict[int, float]:
    """Each allowed document's score for the query, as SQLite's ``lexical_search`` computes it.

    Per query term (a repeated stem counts again, as SQLite's one MATCH per term does): FTS5's
    single-term BM25, whose IDF counts every row holding the term (``n_all``), then
    ``user_bm25``, which swaps the IDF of the allowed rows for the user's.
    """
    average = table_tokens / table_rows if table_rows else 0.0
    per_term: list[list[tuple[int, float]]] = []
    for stem in stems:
        holding = [d for d in documents if stem in d.body or stem in d.context]
        fts_idf = idf(table_rows, len(holding))
        hits: list[tuple[int, float]] = []
        for d in holding:
            if not d.allowed:
                continue
            freq = d.body.count(stem) + context_weight * d.context.count(stem)
            length = len(d.body) + len(d.context)
            norm = K1 * (1 - B + B * length / average) if average else K1 * (1 - B)
            hits.append((d.memory_id, fts_idf * (freq * (K1 + 1)) / (freq + norm)))
        per_term.append(hits)
    return user_bm25(per_term, table_rows, user_rows)
