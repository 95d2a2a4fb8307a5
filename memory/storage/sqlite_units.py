"""A unit of the storage protocol as the SQLite statements the group-commit writer runs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from memory.context import UserContext
from memory.lexical import user_terms
from memory.records import Memory
from memory.storage.group_commit import Statement
from memory.storage.protocol import Unit

# -- statements the writer commits ---------------------------------------------------------

UPSERT_CONTEXT = (
    "INSERT INTO contexts (user_id, version, data) VALUES (?, ?, ?)"
    " ON CONFLICT (user_id) DO UPDATE SET version = excluded.version, data = excluded.data"
)
INSERT_HISTORY = (
    "INSERT INTO context_history (user_id, version, at, actor, change, state) VALUES (?, ?, ?, ?, ?, ?)"
)
INSERT_MEMORY = (
    "INSERT INTO memories (id, user_id, text, kind, metadata, created_at, source_id, session_prev, scope)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_FTS = "INSERT INTO memories_fts (rowid, body, context) VALUES (?, ?, ?)"


def context_statements(
    ctx: UserContext, encoded: str, at: datetime, actor: str, change: dict[str, Any]
) -> list[Statement]:
    """Write the current state and append its history row (the state after the change)."""
    return [
        (UPSERT_CONTEXT, (ctx.user_id, ctx.version, encoded)),
        (
            INSERT_HISTORY,
            (
                ctx.user_id,
                ctx.version,
                at.isoformat(),
                actor,
                orjson.dumps(change).decode(),
                encoded,
            ),
        ),
    ]


def memory_statements(memory: Memory, body: str, context: str, session_prev: int | None) -> list[Statement]:
    return [
        (
            INSERT_MEMORY,
            (
                memory.id,
                memory.user_id,
                memory.text,
                memory.kind,
                orjson.dumps(memory.metadata, default=dict).decode(),
                memory.created_at.isoformat(),
                memory.source_id,
                session_prev,
                memory.scope,
            ),
        ),
        (INSERT_FTS, (memory.id, user_terms(memory.user_id, body), user_terms(memory.user_id, context))),
    ]


def forget_memories_statements(memory_ids: Sequence[int]) -> list[Statement]:
    """Delete memories; the next turn of each loses the words it was indexed with from it."""
    statements: list[Statement] = []
    for memory_id in memory_ids:
        statements += [
            (
                "UPDATE memories_fts SET context = ''"
                " WHERE rowid IN (SELECT id FROM memories WHERE session_prev = ?)",
                (memory_id,),
            ),
            ("UPDATE memories SET session_prev = NULL WHERE session_prev = ?", (memory_id,)),
            ("DELETE FROM memories_fts WHERE rowid = ?", (memory_id,)),
            ("DELETE FROM memories WHERE id = ?", (memory_id,)),
        ]
    return statements


def edit_memory_statements(
    memory: Memory, body: str, following: Sequence[tuple[int, str]]
) -> list[Statement]:
    """Replace a memory's text and terms (its old embedding is dropped, to be remade), and the
    context terms of the turns indexed with it as their previous one (``following``: id, terms)."""
    statements: list[Statement] = [
        ("UPDATE memories SET text = ?, embedding = NULL WHERE id = ?", (memory.text, memory.id)),
        ("UPDATE memories_fts SET body = ? WHERE rowid = ?", (user_terms(memory.user_id, body), memory.id)),
    ]
    statements += [
        ("UPDATE memories_fts SET context = ? WHERE rowid = ?", (user_terms(memory.user_id, context), mid))
        for mid, context in following
    ]
    return statements


def compact_history_statement(user_id: str, cutoff: datetime, keep_version: int) -> Statement:
    """Drop the user's history states stored before ``cutoff`` (retention); ``keep_version``
    (the current one) always stays, so the context can still be shown and restored."""
    return (
        "DELETE FROM context_history WHERE user_id = ? AND at < ? AND version <> ?",
        (user_id, cutoff.isoformat(), keep_version),
    )


def redact_history_statement(user_id: str, version: int, state: str) -> Statement:
    """Replace one stored history state (only ever to take a forgotten text out of it)."""
    return (
        "UPDATE context_history SET state = ? WHERE user_id = ? AND version = ?",
        (state, user_id, version),
    )


def erasure_statement(user_id: str, at: datetime, actor: str, request: str, rows: int) -> Statement:
    return (
        "INSERT INTO erasures (user_id, at, actor, request, rows) VALUES (?, ?, ?, ?, ?)",
        (user_id, at.isoformat(), actor, request, rows),
    )


def forget_user_statements(user_id: str) -> list[Statement]:
    return [
        (
            "DELETE FROM memories_fts WHERE rowid IN (SELECT id FROM memories WHERE user_id = ?)",
            (user_id,),
        ),
        ("DELETE FROM memories WHERE user_id = ?", (user_id,)),
        ("DELETE FROM context_history WHERE user_id = ?", (user_id,)),
        ("DELETE FROM contexts WHERE user_id = ?", (user_id,)),
    ]


def model_change_statements(model: str, keep_vectors: bool = False) -> list[Statement]:
    """Record the embedding model; embeddings of another model are dropped to be remade, unless
    ``keep_vectors`` (the same model under a new name)."""
    drop: list[Statement] = [("UPDATE memories SET embedding = NULL WHERE embedding IS NOT NULL", ())]
    return [
        *([] if keep_vectors else drop),
        (
            "INSERT INTO meta (key, value) VALUES ('embedding_model', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (model,),
        ),
    ]


def unit_statements(unit: Unit) -> list[Statement]:
    """Everything ``unit`` writes, in an order where each step sees the ones before it: the
    forgets before the new rows (an edit or a link never points at a row deleted after it)."""
    uid = unit.user_id
    statements: list[Statement] = []
    if unit.forget_user:
        statements += forget_user_statements(uid)
    statements += forget_memories_statements(unit.forget_ids)
    for edit in unit.edits:
        statements += edit_memory_statements(edit.memory, edit.body, edit.following)
    statements += [redact_history_statement(uid, version, state) for version, state in unit.redactions]
    if unit.write is not None:
        w = unit.write
        statements += context_statements(w.context, w.encoded, w.at, w.actor, dict(w.change))
    for new in unit.memories:
        statements += memory_statements(new.memory, new.body, new.context, new.session_prev)
    if unit.compact_before is not None:
        keep = unit.write.context.version if unit.write is not None else unit.expected_version or 0
        statements.append(compact_history_statement(uid, unit.compact_before, keep))
    if unit.erasure is not None:
        e = unit.erasure
        statements.append(erasure_statement(uid, e.at, e.actor, e.request, e.rows))
    statements += [
        ("UPDATE memories SET embedding = ? WHERE id = ? AND user_id = ?", (vector, mid, uid))
        for mid, vector in unit.embeddings
    ]
    return statements
