"""Lexical terms: every word a memory holds becomes a term of its user's own, so FTS5's posting
lists are per user and a search reads only the asking user's rows.

Why (measured by a study at 100k memories, 1,000 users; figures in the issue 3 note): with
shared words, scoring a 4-word query walked each word's posting list across all users: 2-3 ms
p50, 6-8 ms p99, 18 / 72 ms at 1M rows. With per-user terms it is 0.3 / 0.7 ms and barely
grows with the table. BM25 is computed per term and re-weighted with the user's own IDF
(``user_bm25``), so the ranking is per-user BM25 at any table size; FTS5's own IDF would
count the whole table's rows and flatten every term's weight as the table grows (lexical
Recall@10 0.681 at 100k rows, 0.67 at 1M, against 0.708 per user).

Python does all splitting and folding, and FTS5 (``porter ascii``) sees only ``[0-9a-z]``
tokens and stems them, so a document and a query always tokenise the same way, whatever the
script: ``<user key>x<ascii word>`` for Latin words (accents folded, stemmed) and
``<user key>z<hex of the NFKC word>0`` for other scripts (whole words, never stemmed).
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence

# Words that carry no topic; BM25 would still reward them, and they cost MATCH time.
STOP_WORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its
    itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    """.split()
)

_APOSTROPHES = str.maketrans("", "", "'\u2019\u02bc")
# Latin letters that NFKD does not decompose (unicode61's remove_diacritics folds them too).
_LATIN_FOLD = str.maketrans(
    {"æ": "ae", "ø": "o", "œ": "oe", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i", "ħ": "h", "ŧ": "t"}
)


def _combining_marks() -> str:
    """Every Unicode combining mark (M*) as a regex class body: marks belong inside words."""
    points = [c for c in range(0x300, 0x20000) if unicodedata.category(chr(c)).startswith("M")]
    points += range(0xE0100, 0xE01F0)
    ranges: list[tuple[int, int]] = []
    start = prev = points[0]
    for point in points[1:]:
        if point != prev + 1:
            ranges.append((start, prev))
            start = point
        prev = point
    ranges.append((start, prev))
    return "".join(f"\\U{a:08x}-\\U{b:08x}" if a != b else f"\\U{a:08x}" for a, b in ranges)


@functools.cache
def _word_pattern() -> re.Pattern[str]:
    """A word starts with a letter or digit (Unicode L*, N*) and goes on through letters, digits
    and combining marks; underscore and everything else separate words. Built at first use, not
    at import: scanning Unicode for the marks costs about 80 ms."""
    return re.compile(rf"[^\W_](?:[^\W_]|[{_combining_marks()}])*")


def words(text: str) -> list[str]:
    """The casefolded words of a text, apostrophes dropped (don't, don’t and dont agree)."""
    return _word_pattern().findall(text.casefold().translate(_APOSTROPHES))


@functools.lru_cache(maxsize=65_536)
def _term(word: str) -> str:
    if word.isascii():
        return "x" + word
    folded = unicodedata.normalize("NFKD", word.translate(_LATIN_FOLD))
    base = "".join(c for c in folded if not unicodedata.combining(c)).casefold()
    if base.isascii() and base.isalnum():
        return "x" + base
    # Ends in a digit: the stemmer leaves it whole.
    return "z" + unicodedata.normalize("NFKC", word).encode().hex() + "0"


@functools.lru_cache(maxsize=65_536)
def user_key(user_id: str) -> str:
    """A short prefix per user: digits only (the stemmer ignores them), 40 bits.

    Two users sharing a key would only share document frequencies; whose rows a search
    returns is decided by the join on ``memories.user_id``, never by the key.
    """
    return str(int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=5).digest(), "big"))


def user_terms(user_id: str, text: str) -> str:
    """What FTS5 indexes for this user's text: its words as the user's own terms."""
    key = user_key(user_id)
    return " ".join(key + _term(w) for w in words(text))


def query_terms(user_id: str, text: str) -> list[str]:
    """The user's distinct terms for a query's words, stop words dropped (unless that is all)."""
    found = words(text)
    kept = [w for w in found if w not in STOP_WORDS] or found
    key = user_key(user_id)
    return list(dict.fromkeys(key + _term(w) for w in kept))


# SQLite refuses a compound query of more than 500 parts (SQLITE_MAX_COMPOUND_SELECT) and its
# lexical search is one part per term plus one; past a few dozen rare terms BM25's order barely
# moves, while every term costs a posting-list read.
MAX_QUERY_TERMS = 64


def informative_terms(terms: Sequence[str], hits: Sequence[int], limit: int = MAX_QUERY_TERMS) -> list[str]:
    """At most ``limit`` of ``terms``, in query order: those the user's rows hold, rarest first.

    ``hits[i]`` is how many of the user's memories hold ``terms[i]``. A term no memory holds adds
    nothing to any score, so dropping those never changes a result; past that the terms with
    the highest user IDF (the fewest hits, ``user_idf``) are kept, ties to the earlier word.
    """
    held = [i for i in range(len(terms)) if hits[i] > 0]
    kept = sorted(sorted(held, key=lambda i: hits[i])[:limit])
    return [terms[i] for i in kept]


# FTS5's BM25 gives a term the IDF log((N - n + 0.5) / (n + 0.5)), at least 1e-6, where N counts
# every row of the table.
def idf(rows: int, hits: int) -> float:
    value = math.log((rows - hits + 0.5) / (hits + 0.5)) if rows > 0 else 0.0
    return value if value > 0 else 1e-6


def user_idf(rows: int, hits: int) -> float:
    """Lucene's BM25 IDF over the user's rows: always positive.

    FTS5's form is 0 for a word in half a user's memories or more, and a new user has few: with
    2 memories no word would count at all, and near-identical memories could not be told apart.
    """
    return math.log(1.0 + (rows - hits + 0.5) / (hits + 0.5))


def user_bm25(
    per_term: Iterable[list[tuple[int, float]]], table_rows: int, user_rows: int
) -> dict[int, float]:
    """Sum each term's FTS5 BM25 after swapping the table's IDF for the user's (``user_idf``).

    ``per_term`` holds, for each term, every (memory id, BM25 >= 0) of the user's rows holding
    it, as FTS5 scored a single-term query (so its IDF used n = that list's length).
    """
    scores: dict[int, float] = {}
    for hits in per_term:
        if not hits:
            continue
        weight = user_idf(user_rows, len(hits)) / idf(table_rows, len(hits))
        for memory_id, score in hits:
            scores[memory_id] = scores.get(memory_id, 0.0) + score * weight
    return scores


def read_varint(data: bytes) -> int:
    """The first SQLite varint of ``data`` (FTS5 keeps its row count as one)."""
    value = 0
    for i, byte in enumerate(data[:9]):
        if i == 8:
            return (value << 8) | byte
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value
    return value
