"""Units of the storage protocol as PostgreSQL statements over ``unnest()`` arrays: one statement
per kind of write for a whole round of units (at most one unit per user), never one per unit.

The order is SQLite's (``sqlite_units.unit_statements``): the forgets before the new rows, so an
edit or a link never points at a row deleted after it. Every statement that changes a lexical
document returns how the table's row and token counts moved (``lexical_totals``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from memory.storage.postgres_lexical import document_terms
from memory.storage.protocol import Unit

# Whole-batch statements. Terms travel as one space-joined string per row (stems hold no
# spaces): a ragged text[][] cannot be unnested, and string_to_array('', ' ') is '{}'.
LOCK_CONTEXTS = (
    # A placeholder (version 0) for a user with no row, so that every checked user's row is
    # locked by one statement in user-id order: two processes' batches cannot deadlock, and a
    # new user made by another process meanwhile is seen (the insert waits for its commit).
    "INSERT INTO contexts (user_id, version, data) SELECT u, 0, '' FROM unnest($1::text[]) u ORDER BY u"
    " ON CONFLICT (user_id) DO UPDATE SET version = contexts.version RETURNING user_id, version"
)
DROP_PLACEHOLDERS = "DELETE FROM contexts WHERE user_id = ANY($1::text[]) AND version = 0"
FORGET_USERS_MEMORIES = (
    "WITH d AS (DELETE FROM memories WHERE user_id = ANY($1::text[]) RETURNING doc_len)"
    " SELECT count(*), coalesce(sum(doc_len), 0) FROM d"
)
FORGET_USERS_HISTORY = "DELETE FROM context_history WHERE user_id = ANY($1::text[])"
FORGET_USERS_CONTEXTS = "DELETE FROM contexts WHERE user_id = ANY($1::text[])"
FORGET_MEMORIES = (
    "WITH d AS (DELETE FROM memories m USING unnest($1::bigint[], $2::text[]) f(id, uid)"
    " WHERE m.id = f.id AND m.user_id = f.uid RETURNING m.id, m.doc_len)"
    " SELECT array_agg(id), count(*), coalesce(sum(doc_len), 0) FROM d"
)
# The next turn of a forgotten memory loses the words it was indexed with from it.
UNLINK_FOLLOWING = (
    "WITH u AS (UPDATE memories SET context_terms = '{}', session_prev = NULL"
    " WHERE session_prev = ANY($1::bigint[]) RETURNING new.doc_len - old.doc_len AS delta)"
    " SELECT coalesce(sum(delta), 0) FROM u"
)
EDIT_MEMORIES = (
    "WITH u AS (UPDATE memories m SET text = e.text, body_terms = string_to_array(e.body, ' '),"
    " embedding = NULL, claimed_by = $5, claimed_until = now() + make_interval(secs => $6)"
    " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) e(id, uid, text, body)"
    " WHERE m.id = e.id AND m.user_id = e.uid RETURNING new.doc_len - old.doc_len AS delta)"
    " SELECT coalesce(sum(delta), 0) FROM u"
)
SET_CONTEXT_TERMS = (
    "WITH u AS (UPDATE memories m SET context_terms = string_to_array(e.ctx, ' ')"
    " FROM unnest($1::bigint[], $2::text[], $3::text[]) e(id, uid, ctx)"
    " WHERE m.id = e.id AND m.user_id = e.uid RETURNING new.doc_len - old.doc_len AS delta)"
    " SELECT coalesce(sum(delta), 0) FROM u"
)
REDACT_HISTORY = (
    "UPDATE context_history h SET state = r.state"
    " FROM unnest($1::text[], $2::bigint[], $3::text[]) r(uid, version, state)"
    " WHERE h.user_id = r.uid AND h.version = r.version"
)
UPSERT_CONTEXTS = (
    "INSERT INTO contexts (user_id, version, data)"
    " SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])"
    " ON CONFLICT (user_id) DO UPDATE SET version = excluded.version, data = excluded.data"
)
INSERT_HISTORY = (
    "INSERT INTO context_history (user_id, version, at, actor, change, state)"
    " SELECT * FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::text[], $5::text[], $6::text[])"
)
INSERT_MEMORIES = (
    # New rows are leased to the process that wrote them: it embeds them from its own queue.
    "WITH i AS (INSERT INTO memories (id, user_id, text, kind, metadata, created_at, source_id,"
    " session_prev, scope, body_terms, context_terms, claimed_by, claimed_until)"
    " SELECT id, uid, text, kind, meta, at, src, prev, scope, string_to_array(body, ' '),"
    " string_to_array(ctx, ' '), $12, now() + make_interval(secs => $13)"
    " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],"
    " $5::text[], $6::timestamptz[], $7::text[], $8::bigint[], $9::text[], $10::text[], $11::text[])"
    " n(id, uid, text, kind, meta, at, src, prev, scope, body, ctx) RETURNING doc_len)"
    " SELECT count(*), coalesce(sum(doc_len), 0) FROM i"
)
COMPACT_HISTORY = (
    "DELETE FROM context_history h"
    " USING unnest($1::text[], $2::timestamptz[], $3::bigint[]) c(uid, cutoff, keep)"
    " WHERE h.user_id = c.uid AND h.at < c.cutoff AND h.version <> c.keep"
)
INSERT_ERASURES = (
    "INSERT INTO erasures (user_id, at, actor, request, rows)"
    " SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::integer[])"
)
SET_EMBEDDINGS = (
    "UPDATE memories m SET embedding = e.v, claimed_by = NULL, claimed_until = NULL"
    " FROM unnest($1::bigint[], $2::text[], $3::vector[]) e(id, uid, v)"
    " WHERE m.id = e.id AND m.user_id = e.uid"
)
ADD_TOTALS = (
    "INSERT INTO lexical_totals (shard, rows, tokens) VALUES ($1, $2, $3) ON CONFLICT (shard)"
    " DO UPDATE SET rows = lexical_totals.rows + excluded.rows,"
    " tokens = lexical_totals.tokens + excluded.tokens"
)


@dataclass(frozen=True, slots=True)
class Lease:
    """Who writes (the process token) and for how long its new and edited rows are its own to
    embed (``PostgresStore.unembedded``)."""

    owner: str
    seconds: float


@dataclass
class Totals:
    """How a batch moved the table's lexical row and token counts."""

    rows: int = 0
    tokens: int = 0


@dataclass
class _Columns:
    """Parallel arrays, one list per column."""

    columns: list[list[Any]] = field(default_factory=list)

    def add(self, *values: Any) -> None:
        if not self.columns:
            self.columns = [[] for _ in values]
        for column, value in zip(self.columns, values, strict=True):
            column.append(value)

    def __bool__(self) -> bool:
        return bool(self.columns)


def _terms(user_id: str, text: str) -> str:
    return " ".join(document_terms(user_id, text))


@dataclass
class _Round:
    """The arrays of one round, one ``_Columns`` per statement."""

    forget_users: list[str] = field(default_factory=list)
    forget: _Columns = field(default_factory=_Columns)
    edits: _Columns = field(default_factory=_Columns)
    following: _Columns = field(default_factory=_Columns)
    redactions: _Columns = field(default_factory=_Columns)
    contexts: _Columns = field(default_factory=_Columns)
    history: _Columns = field(default_factory=_Columns)
    memories: _Columns = field(default_factory=_Columns)
    compact: _Columns = field(default_factory=_Columns)
    erasures: _Columns = field(default_factory=_Columns)
    vectors: _Columns = field(default_factory=_Columns)


def _round(units: Sequence[Unit]) -> _Round:
    r = _Round(forget_users=[u.user_id for u in units if u.forget_user])
    for u in units:
        uid = u.user_id
        for mid in u.forget_ids:
            r.forget.add(mid, uid)
        for edit in u.edits:
            r.edits.add(edit.memory.id, uid, edit.memory.text, _terms(uid, edit.body))
            for mid, context in edit.following:
                r.following.add(mid, uid, _terms(uid, context))
        for version, state in u.redactions:
            r.redactions.add(uid, version, state)
        if (w := u.write) is not None:
            change = orjson.dumps(dict(w.change)).decode()
            r.contexts.add(uid, w.context.version, w.encoded)
            r.history.add(uid, w.context.version, w.at, w.actor, change, w.encoded)
        for new in u.memories:
            m = new.memory
            meta = orjson.dumps(m.metadata, default=dict).decode()
            body, context = _terms(uid, new.body), _terms(uid, new.context)
            r.memories.add(
                m.id, m.user_id, m.text, m.kind, meta, m.created_at, m.source_id, new.session_prev,
                m.scope, body, context,
            )  # fmt: skip
        if u.compact_before is not None:
            keep = u.write.context.version if u.write is not None else u.expected_version or 0
            r.compact.add(uid, u.compact_before, keep)
        if (e := u.erasure) is not None:
            r.erasures.add(uid, e.at, e.actor, e.request, e.rows)
        for mid, vector in u.embeddings:
            r.vectors.add(mid, uid, vector)
    return r


async def _row(conn: asyncpg.Connection, sql: str, *args: Any) -> asyncpg.Record:
    """The one row of an aggregate."""
    row = await conn.fetchrow(sql, *args)
    if row is None:
        raise AssertionError(f"no row from: {sql}")
    return row


async def write_round(conn: asyncpg.Connection, units: Sequence[Unit], totals: Totals, lease: Lease) -> None:
    """Everything ``units`` (at most one per user, all checked already) write, set-based."""
    r = _round(units)
    forget_users, forget, edits, following = r.forget_users, r.forget, r.edits, r.following
    redactions, contexts, history, memories = r.redactions, r.contexts, r.history, r.memories
    compact, erasures, vectors = r.compact, r.erasures, r.vectors
    if forget_users:
        rows, tokens = await _row(conn, FORGET_USERS_MEMORIES, forget_users)
        totals.rows -= rows
        totals.tokens -= tokens
        await conn.execute(FORGET_USERS_HISTORY, forget_users)
        await conn.execute(FORGET_USERS_CONTEXTS, forget_users)
    if forget:
        gone, rows, tokens = await _row(conn, FORGET_MEMORIES, *forget.columns)
        totals.rows -= rows
        totals.tokens -= tokens
        if gone:
            totals.tokens += await conn.fetchval(UNLINK_FOLLOWING, gone)
    if edits:
        totals.tokens += await conn.fetchval(EDIT_MEMORIES, *edits.columns, lease.owner, lease.seconds)
    if following:
        totals.tokens += await conn.fetchval(SET_CONTEXT_TERMS, *following.columns)
    if redactions:
        await conn.execute(REDACT_HISTORY, *redactions.columns)
    if contexts:
        await conn.execute(UPSERT_CONTEXTS, *contexts.columns)
        await conn.execute(INSERT_HISTORY, *history.columns)
    if memories:
        rows, tokens = await _row(conn, INSERT_MEMORIES, *memories.columns, lease.owner, lease.seconds)
        totals.rows += rows
        totals.tokens += tokens
    if compact:
        await conn.execute(COMPACT_HISTORY, *compact.columns)
    if erasures:
        await conn.execute(INSERT_ERASURES, *erasures.columns)
    if vectors:
        await conn.execute(SET_EMBEDDINGS, *vectors.columns)
