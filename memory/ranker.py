"""Second stage of retrieval: a learned model re-scores the fusion's top candidates.

Why: the fusion (memory/retrieval.py) is a fixed blend of two scores and cannot tell that a
"when" question wants the turn with a date in it, that a question names one speaker, that
the answer sits in the turn after a hit, or that a conversation hit several times holds it.
A model over features the data already carries learns such things from locomo-dev
(benchmarks/train_ranker.py, leave-one-conversation-out; figures in the README): a logistic
regression, stacked with LambdaMART trees when that measures better. Its weights and trees
are a small JSON file in this package: nothing is trained at run time, and scoring is a
matrix product and a walk of the trees in numpy (memory/ranker_trees.py).

A memory that is only a question (every sentence ends in "?") asks, it does not tell: it is
ranked after every statement of the pool, whatever its score (``final_order``), so the
person's earlier "Do you remember my allergy?" never hides the allergy itself.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from memory import models
from memory.errors import ConfigError
from memory.lexical import STOP_WORDS, words
from memory.ranker_basis import PRINCIPAL_FEATURES, Basis, principal_features
from memory.ranker_trees import Forest
from memory.ranker_vectors import QUESTION_FEATURES, VECTOR_FEATURES, question_features, vector_features
from memory.records import Memory

PACKAGE = Path(__file__).resolve().parent
WEIGHTS_FILE = PACKAGE / models.DEFAULT.ranker_weights
FORMAT = 4
POOL_SIZE = 60  # the fusion's top 60 hold about 0.90 of locomo-dev's evidence
EXACT = 0.98  # a cosine this close: the memory says what the query says

FEATURES: tuple[str, ...] = (
    "fused",
    "fused_share",
    "dense",
    "dense_minmax",
    "lexical_share",
    "lexical_log",
    "rank_fused_log",
    "rank_dense_log",
    "rank_lexical_log",
    "prev_dense",
    "next_dense",
    "prev2_dense",
    "next2_dense",
    "prev_lexical",
    "next_lexical",
    "prev2_lexical",
    "next2_lexical",
    "coverage",
    "coverage_next",
    "coverage_prev",
    "speaker_named",
    "speaker_other",
    "when_x_time",
    "date_match",
    "shared_capitals",
    "shared_numbers",
    "capitals_x_where_who",
    "numbers_x_how_many",
    "is_question",
    "only_question",
    "caption",
    "length_log",
    "kind_exchange",
    "kind_fact",
    "kind_note",
    # The session around a candidate (``session_features``): what else of its conversation
    # the pool holds, and how near it sits to the pool's best memory.
    "session_mate_fused",
    "session_mate_mean",
    "session_size_log",
    "session_rank_log",
    "session_fused_sum",
    "turns_to_best_log",
    "session_of_best",
    "session_mate_dense",
    "session_mate_lexical",
    "near2_fused",
    "near2_count",
    "near4_fused",
    "near4_count",
    # The candidates' vectors and the kind of question (memory/ranker_vectors.py).
    *VECTOR_FEATURES,
    *QUESTION_FEATURES,
    # The candidate's place in the embedding model's main directions (memory/ranker_basis.py).
    *PRINCIPAL_FEATURES,
)
_SESSION_COLUMNS = slice(35, 48)
_VECTOR_COLUMNS = slice(48, 48 + len(VECTOR_FEATURES))
_QUESTION_COLUMNS = slice(_VECTOR_COLUMNS.stop, _VECTOR_COLUMNS.stop + len(QUESTION_FEATURES))
PRINCIPAL_COLUMNS = slice(_QUESTION_COLUMNS.stop, len(FEATURES))

# The model is linear in these and in the pairwise products of the ones below (66 more
# terms): a product lets, say, a "when" question weigh the dense score differently, or the
# named speaker count only when the text also matches. Leave-one-conversation-out Recall@10
# 0.811 without the products, 0.822 with them (category 5: 0.921 / 0.900; fusion 0.905).
PAIRED = (
    "fused",
    "fused_share",
    "dense_minmax",
    "lexical_share",
    "rank_fused_log",
    "coverage",
    "when_x_time",
    "speaker_named",
    "speaker_other",
    "prev_dense",
    "next_dense",
)
_PAIRED_AT = np.array([FEATURES.index(name) for name in PAIRED])
_PAIRS = np.triu_indices(len(PAIRED))
MODEL_FEATURES: tuple[str, ...] = FEATURES + tuple(
    f"{PAIRED[i]}*{PAIRED[j]}" for i, j in zip(*_PAIRS, strict=True)
)


def expand(features: np.ndarray) -> np.ndarray:
    """The model's inputs: the features and the pairwise products of ``PAIRED``."""
    paired = features[:, _PAIRED_AT]
    products = (paired[:, :, None] * paired[:, None, :])[:, _PAIRS[0], _PAIRS[1]]
    return np.hstack([features, products])


_MONTHS = "january february march april may june july august september october november december".split()
_WHEN = re.compile(
    r"\b(when|how long|what (year|month|day|date|time)|which (year|month|day)|since|ago|how many "
    r"(days|weeks|months|years))\b",
    re.I,
)
_HOW_MANY = re.compile(r"\bhow (many|much|often)\b", re.I)
_WHERE_WHO = re.compile(r"\b(where|who|whom|whose)\b", re.I)
_TIME = re.compile(
    r"\b(yesterday|today|tonight|tomorrow|ago|weekend|recently|last|next|this (week|month|year|morning)"
    r"|monday|tuesday|wednesday|thursday|friday|saturday|sunday|" + "|".join(_MONTHS) + r"|(19|20)\d\d)\b",
    re.I,
)
_CAPITAL = re.compile(r"\b[A-Z][\w'’-]+")
_NUMBER = re.compile(r"\d+")
_SENTENCE = re.compile(r"[^.!?]+[.!?]*")
_SPEAKER = re.compile(r"^([^:\n]{1,40}):\s")
BOT_PREFIX = "\nBot: "


def person_part(memory: Memory) -> str:
    """What the person said: an exchange memory without the bot's reply."""
    return _person_text(memory.text, memory.kind)


def _person_text(text: str, kind: str) -> str:
    return text.split(BOT_PREFIX, 1)[0] if kind == "exchange" else text


def _stem(word: str) -> str:
    return word[:5]  # crude, but agrees for allergy / allergic, paint / painting


@dataclass(frozen=True, slots=True)
class _Text:
    speaker: str | None
    stems: frozenset[str]
    capitals: frozenset[str]
    numbers: frozenset[str]
    has_time: bool
    is_question: bool
    only_question: bool
    caption: bool
    words: int
    constant: tuple[float, ...]  # its columns that do not depend on the query (28-34)


_KINDS = ("exchange", "fact", "note")


def _analyse(text: str, kind: str) -> _Text:
    """What the features need of one memory's person part (``_analyse_memory`` caches it)."""
    match = _SPEAKER.match(text)
    speaker = match.group(1).strip() if match and len(match.group(1).split()) <= 3 else None
    body = text[match.end() :] if speaker and match else text
    said = body.split(" (photo:", 1)[0]
    sentences = [s.strip() for s in _SENTENCE.findall(said) if s.strip()]
    found = words(body)
    is_question = "?" in said
    only_question = bool(sentences) and all(s.endswith("?") for s in sentences)
    caption = "(photo:" in body
    kinds = tuple(float(kind == name) for name in _KINDS)
    return _Text(
        speaker,
        frozenset(_stem(w) for w in found if w not in STOP_WORDS),
        frozenset(w.casefold() for w in _CAPITAL.findall(body)) - STOP_WORDS,
        frozenset(_NUMBER.findall(body)),
        bool(_TIME.search(body)),
        is_question,
        only_question,
        caption,
        len(found),
        (float(is_question), float(only_question), float(caption), math.log1p(len(found)), *kinds),
    )


@functools.lru_cache(maxsize=65_536)
def _analyse_memory(text: str, kind: str) -> _Text:
    """``_analyse`` of a memory's person part, cached by its text and kind (memories recur
    across queries)."""
    return _analyse(_person_text(text, kind), kind)


def forget_cached_texts() -> None:
    """Drop every analysis of a memory's text kept for speed (its stems, capitals, numbers):
    called after an erasure or an edit, so that the forgotten words do not stay in this
    process's caches. Refilled by the next queries: one analysis costs about 10 microseconds.
    (Another process's erasure does not reach this one's caches: they empty themselves as
    other texts push the forgotten ones out.)"""
    _analyse_memory.cache_clear()


def cached_texts() -> int:
    """How many memory texts have an analysis cached (``forget_cached_texts`` empties it)."""
    return _analyse_memory.cache_info().currsize


def is_only_question(memory: Memory) -> bool:
    """The person only asked (every sentence of their part ends in "?"): it states no fact."""
    return _analyse_memory(memory.text, memory.kind).only_question


def asks_the_bot(memory: Memory) -> bool:
    """An exchange whose person part is only a question put to the bot."""
    return memory.kind == "exchange" and BOT_PREFIX in memory.text and is_only_question(memory)


@dataclass(frozen=True, slots=True)
class Pool:
    """The fusion's best candidates for one query, with what the features are made of.

    ``dense`` holds inner products (the user's lowest where unknown), ``lexical`` raw BM25
    (0: no hit); ``neighbour_dense`` / ``neighbour_lexical`` hold the same of the previous,
    next, second previous and second next turn (NaN / 0: none). ``query_vector`` and
    ``vectors`` (one row per candidate, NaN: not embedded yet) are None without a model.

    Shares and min-max scores are taken relative to the best *statement* of the pool: an
    earlier asking of the same question matches the query best of all and would otherwise
    make the fact it asks about look weak.
    """

    query: str
    memories: tuple[Memory, ...]
    rankers: tuple[tuple[str, ...], ...]
    fused: np.ndarray
    dense: np.ndarray
    known_dense: tuple[bool, ...]
    lexical: np.ndarray
    dense_floor: float
    neighbour_dense: np.ndarray
    neighbour_lexical: np.ndarray
    previous: tuple[Memory | None, ...]
    following: tuple[Memory | None, ...]
    session_gap_minutes: float
    query_vector: np.ndarray | None = None
    vectors: np.ndarray | None = None

    def features(self, basis: Basis | None = None) -> np.ndarray:
        """One row of ``FEATURES`` per candidate (float64); ``basis``: the ranker's, for the
        principal columns (None: they stay 0)."""
        n = len(self.memories)
        out = np.zeros((n, len(FEATURES)))
        if n == 0:
            return out
        q = _Query.of(self.query)
        texts = [_analyse_memory(m.text, m.kind) for m in self.memories]
        # Coverage once per memory (pool members and their neighbours), in one pass: two
        # function calls per neighbour cost 0.3 ms a query.
        around = (*self.memories, *self.previous, *self.following)
        wanted = {m.id: m for m in around if m is not None}
        stems, asked = q.stems, len(q.stems) or 1
        covered = {
            mid: len(stems & _analyse_memory(m.text, m.kind).stems) / asked for mid, m in wanted.items()
        }
        self._stage_one(out, texts)
        speakers = {t.speaker.casefold() for t in texts if t.speaker}
        named = speakers & q.words
        one_named = len(named) == 1
        asked_capitals = q.capitals - speakers  # a speaker's name is not a shared capital
        dated = bool(q.years or q.months)
        rows = []  # columns 17-34, written at once: a numpy row write per value costs more
        for i, (memory, t) in enumerate(zip(self.memories, texts, strict=True)):
            nxt, prv = self.following[i], self.previous[i]
            own = other = False
            if one_named and t.speaker:
                own = t.speaker.casefold() in named
                other = not own
            capitals = len(t.capitals & asked_capitals)
            numbers = len(t.numbers & q.numbers)
            rows.append(
                (
                    covered[memory.id],
                    covered[nxt.id] if nxt else 0.0,
                    covered[prv.id] if prv else 0.0,
                    float(own),
                    float(other),
                    float(q.when and t.has_time),
                    q.date_match(memory.created_at) if dated else 0.0,
                    capitals,
                    numbers,
                    capitals * q.where_who,
                    numbers * q.how_many,
                    *t.constant,
                )
            )
        out[:, 17:35] = rows
        shares = out[:, 1], out[:, 3], out[:, 4]
        out[:, _SESSION_COLUMNS] = session_features(self.memories, *shares, self.session_gap_minutes)
        out[:, _VECTOR_COLUMNS] = vector_features(self.query_vector, self.vectors, n)
        out[:, _QUESTION_COLUMNS] = question_features(self.query, out[:, 3])
        out[:, PRINCIPAL_COLUMNS] = principal_features(basis, self.vectors, n)
        return out

    def _stage_one(self, out: np.ndarray, texts: Sequence[_Text]) -> None:
        """Columns 0-16: the fusion's scores, shares and ranks, and the neighbours' scores."""
        n = len(self.memories)
        states = np.array([not t.only_question for t in texts])
        if not states.any():
            states[:] = True
        floor = self.dense_floor
        span = float(self.dense[states].max()) - floor
        top_fused = float(self.fused[states].max())
        top_lexical = float(self.lexical[states].max())

        def dense_share(values: np.ndarray) -> np.ndarray:
            shares = (values - floor) / span if span > 1e-12 else np.zeros_like(values)
            return np.nan_to_num(shares, nan=0.0)

        def lexical_share(values: np.ndarray) -> np.ndarray:
            return values / top_lexical if top_lexical > 0 else np.zeros_like(values)

        out[:, 0] = self.fused
        out[:, 1] = self.fused / top_fused if top_fused > 0 else 0.0
        out[:, 2] = self.dense
        out[:, 3] = dense_share(self.dense)
        out[:, 4] = lexical_share(self.lexical)
        out[:, 5] = np.log1p(np.maximum(self.lexical, 0.0))
        out[:, 6] = np.log1p(np.arange(n))
        out[:, 7] = np.log1p(_ranks(-self.dense))
        lexical_ranks = _ranks(-self.lexical).astype(float)
        lexical_ranks[self.lexical <= 0] = n
        out[:, 8] = np.log1p(lexical_ranks)
        out[:, 9:13] = dense_share(self.neighbour_dense)
        out[:, 13:17] = lexical_share(self.neighbour_lexical)


@dataclass(frozen=True, slots=True)
class _Query:
    words: frozenset[str]
    stems: frozenset[str]
    capitals: frozenset[str]
    numbers: frozenset[str]
    when: bool
    how_many: float
    where_who: float
    years: frozenset[int]
    months: frozenset[int]

    @classmethod
    def of(cls, text: str) -> _Query:
        found = words(text)
        return cls(
            frozenset(found),
            frozenset(_stem(w) for w in found if w not in STOP_WORDS),
            frozenset(w.casefold() for w in _CAPITAL.findall(text)) - STOP_WORDS,
            frozenset(_NUMBER.findall(text)),
            bool(_WHEN.search(text)),
            float(bool(_HOW_MANY.search(text))),
            float(bool(_WHERE_WHO.search(text))),
            frozenset(int(y) for y in re.findall(r"\b(?:19|20)\d\d\b", text)),
            frozenset(i + 1 for i, m in enumerate(_MONTHS) if m in found),
        )

    def date_match(self, when: datetime) -> float:
        if not (self.years or self.months):
            return 0.0
        year_ok = not self.years or when.year in self.years
        month_ok = not self.months or when.month in self.months
        return float(year_ok and month_ok)


FAR = 40  # turns: "not near the best memory" (another session, or farther than this)


def sessions(memories: Sequence[Memory], gap_minutes: float) -> np.ndarray:
    """A session number per memory, numbered in pool order: memories of one scope said less
    than ``gap_minutes`` apart, one after the other in time, share one (``same_session``'s
    rule, applied to the pool's members only: two members linked only through turns outside
    the pool may be split, which is rare and costs only the feature's precision)."""
    n = len(memories)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    scope_names = sorted({m.scope for m in memories})
    when = np.array([m.created_at.timestamp() for m in memories])
    scope = np.array([scope_names.index(m.scope) for m in memories] if len(scope_names) > 1 else [0] * n)
    order = np.lexsort((np.array([m.id for m in memories]), when, scope))
    new = (np.diff(when[order]) > gap_minutes * 60) | (gap_minutes <= 0) | (np.diff(scope[order]) != 0)
    group = np.empty(n, dtype=np.int64)
    group[order] = np.concatenate([[0], np.cumsum(new)])
    _, first = np.unique(group, return_index=True)  # renumber by first appearance in pool order
    return np.asarray(_ranks(first)[group])


def session_features(
    memories: Sequence[Memory], fused: np.ndarray, dense: np.ndarray, lexical: np.ndarray, gap_minutes: float
) -> np.ndarray:
    """The session columns of ``FEATURES`` (``fused``, ``dense``, ``lexical``: the shares).

    Why: an answer often sits in a conversation the query hits several times, or a few turns
    from the best hit, while a lone match in an unrelated session is more often a stray word
    (leave-one-conversation-out Recall@10 0.821 -> 0.83 on locomo-dev). Turn distance is the
    difference of memory ids, which count a user's turns in order (others' turns between
    them only make it larger).
    """
    n = len(memories)
    group = sessions(memories, gap_minutes)
    ids = np.array([m.id for m in memories], dtype=np.int64)
    mates = (group[:, None] == group[None, :]) & ~np.eye(n, dtype=bool)
    count = mates.sum(axis=1)
    out = np.zeros((n, 13))
    if n == 0:
        return out
    apart = np.abs(ids[:, None] - ids[None, :])
    masks = np.stack([mates, mates & (apart <= 2), mates & (apart <= 4)])
    best_mate = np.where(masks, fused[None, None, :], 0.0).max(axis=2)  # mates, near 2, near 4
    out[:, 0] = best_mate[0]
    out[:, 1] = (mates @ fused) / np.maximum(count, 1)
    out[:, 2] = np.log1p(count + 1)
    _, first = np.unique(group, return_index=True)
    best = np.maximum(out[:, 0], fused)[first]  # each session's best, in session number order
    out[:, 3] = np.log1p(_ranks(-best)[group])
    out[:, 4] = out[:, 1] * count + fused  # the session's sum, this memory included
    same_as_best = group == group[0]
    turns = np.where(same_as_best, np.abs(ids - ids[0]), FAR)
    out[:, 5] = np.log1p(np.minimum(turns, FAR))
    out[:, 6] = same_as_best
    out[:, 7:9] = np.where(mates[:, None, :], np.stack([dense, lexical])[None], 0.0).max(axis=2)
    out[:, 9], out[:, 10] = best_mate[1], masks[1].sum(axis=1)
    out[:, 11], out[:, 12] = best_mate[2], masks[2].sum(axis=1)
    return out


def _ranks(values: np.ndarray) -> np.ndarray:
    """0 for the smallest value, stable."""
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    return ranks


@dataclass(frozen=True, slots=True)
class RankerModel:
    """A probability that a candidate is evidence: a logistic regression, alone or stacked
    with LambdaMART trees.

    The linear part standardises ``expand(features)`` and takes a dot product; the trees
    (memory/ranker_trees.py, evaluated in numpy) read ``FEATURES`` as they are. With trees,
    ``combine`` = (a, b, c) gives the logit a·linear + b·trees + c: the two parts are weighed
    equally after scaling each by its spread, and a and b carry one calibration (fitted on the
    out-of-fold scores) so the result stays a probability the responder can threshold.
    ``basis`` gives the principal columns of the features (``basis_for``).
    """

    names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    trees: Forest | None = None
    combine: tuple[float, float, float] = (1.0, 0.0, 0.0)
    basis: Basis | None = None

    def basis_for(self, encoder_model: str) -> Basis | None:
        """The basis for vectors of ``encoder_model``; None when the model was trained on
        another model's vectors (a custom model borrowing the default's weights): its
        principal columns then stay 0, the mean's coordinates, and the rest still ranks."""
        return self.basis if self.basis is not None and self.basis.serves(encoder_model) else None

    @property
    def kind(self) -> str:
        return "logistic" if self.trees is None else "logistic+lambdamart"

    def linear(self, features: np.ndarray) -> np.ndarray:
        """The logistic regression's logit per row of ``features``."""
        return np.asarray(((expand(features) - self.mean) / self.scale) @ self.weights + self.bias)

    def logits(self, features: np.ndarray) -> np.ndarray:
        """The model's logit per row of ``features`` (``FEATURES`` columns)."""
        if self.trees is None:
            return self.linear(features)
        a, b, c = self.combine
        return a * self.linear(features) + b * self.trees.predict(features) + c

    def scores(self, features: np.ndarray) -> np.ndarray:
        """One probability per row of ``features`` (``FEATURES`` columns)."""
        return np.asarray(1.0 / (1.0 + np.exp(-self.logits(features))))

    def save(self, path: Path, info: Mapping[str, Any], check: np.ndarray | None = None) -> None:
        """The weights file; ``check``: rows whose tree outputs the file keeps, so that a test
        can prove the numpy trees give the trainer's (LightGBM's) predictions."""
        data: dict[str, Any] = {
            "format": FORMAT,
            "kind": self.kind,
            "features": list(self.names),
            "mean": [round(float(v), 8) for v in self.mean],
            "scale": [round(float(v), 8) for v in self.scale],
            "weights": [round(float(v), 8) for v in self.weights],
            "bias": round(self.bias, 8),
        }
        if self.basis is not None:
            data["basis"] = self.basis.to_json()
        if self.trees is not None:
            data["tree_features"] = list(FEATURES)
            data["trees"] = self.trees.to_json()
            data["combine"] = [float(v) for v in self.combine]
            if check is not None:
                data["check"] = {"x": check.tolist(), "trees": self.trees.predict(check).tolist()}
        data["info"] = dict(info)
        path.write_text(json.dumps(data, indent=None, separators=(",", ":")) + "\n")


def weights_path(encoder_model: str) -> Path:
    """The weights trained on this embedding model's scores (the default model's for others)."""
    return PACKAGE / models.ranker_weights(encoder_model or models.DEFAULT.name)


@functools.cache
def load_model(path: Path = WEIGHTS_FILE) -> RankerModel:
    """The shipped weights; a missing or stale file is a ConfigError that says what to do."""
    hint = "reinstall memory-bot, run benchmarks/train_ranker.py, or set retrieval.reranker = false"
    try:
        data = json.loads(path.read_text())
        names = tuple(data["features"])
        arrays = [np.asarray(data[key], dtype=np.float64) for key in ("mean", "scale", "weights")]
        bias = float(data["bias"])
        fmt = data["format"]
        trees = Forest.from_json(data["trees"]) if "trees" in data else None
        combine = tuple(float(v) for v in data.get("combine", (1.0, 0.0, 0.0)))
        tree_features = tuple(data.get("tree_features", FEATURES))
        basis = Basis.from_json(data["basis"]) if "basis" in data else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the reranker's weights {path}: {exc}; {hint}") from exc
    stale = fmt != FORMAT or names != MODEL_FEATURES or any(a.shape != (len(names),) for a in arrays)
    if trees is not None:
        stale |= tree_features != FEATURES or trees.features_used > len(FEATURES) or len(combine) != 3
    if stale:
        raise ConfigError(f"the reranker's weights {path} do not match this version's features; {hint}")
    a, b, c = combine
    return RankerModel(names, arrays[0], arrays[1], arrays[2], bias, trees, (a, b, c), basis)


def final_order(memories: Sequence[Memory], features: np.ndarray, scores: np.ndarray) -> list[int]:
    """Candidate positions, best first: a memory that says what the query says (cosine at
    least ``EXACT``) first, then statements by score, then questions by score.

    The exact rule is for a person looking up their own words: the model learned from
    locomo-dev, where no question repeats a turn, and could rank a near-twin above the very
    text (16 writers saving "round 1 worker 1 item 3" and its kin).
    """
    asks = [is_only_question(m) for m in memories]
    exact = features[:, FEATURES.index("dense")] >= EXACT if len(memories) else np.zeros(0, bool)
    return sorted(
        range(len(memories)), key=lambda i: (asks[i], not exact[i], -float(scores[i]), -memories[i].id)
    )
