"""What a forget or an edit must reach besides the memory rows: the exchanges quoting the text.

An exchange lives in the context's ``recent`` tuple and, through it, in every history state
stored while it was recent. A forget removes it from both, and an edit (the person changed
their message) rewrites it in both, so the old text survives nowhere: not in the snapshot
(written from the contexts), an export (read from the store) or a prompt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from memory.context import Exchange, UserContext
from memory.records import HistoryEntry, Memory

# The text of an exchange memory: "<name>: <message>\nBot: <response>" (see exchange_text).
_BOT_MARK = "\nBot: "


def exchange_text(name: str, message: str, response: str) -> str:
    """The text an exchange is remembered as."""
    return f"{name}: {message}{_BOT_MARK}{response}"


def edited_exchange_text(text: str, message: str, exchange: Exchange | None) -> str:
    """``text`` (an exchange memory's) with its message replaced by ``message``.

    The exchange in ``recent`` tells exactly where the old message was; without it (long
    since out of ``recent``) the name ends at the first ": " and the reply starts after the
    last "\\nBot: ", which is exact unless the name or the reply holds those marks.
    """
    if exchange is not None:
        tail = f": {exchange.message}{_BOT_MARK}{exchange.response}"
        if text.endswith(tail):
            return exchange_text(text[: -len(tail)], message, exchange.response)
    head, _, rest = text.partition(": ")
    response = rest.rpartition(_BOT_MARK)[2] if _BOT_MARK in rest else ""
    return exchange_text(head, message, response)


@dataclass(frozen=True, slots=True)
class ErasureTarget:
    """The memories, sources, scopes and age being forgotten (or edited), and how to recognise
    their exchanges.

    Exchanges stored before they carried a memory id are recognised by the time of their
    exchange memory (both are stamped with the same instant).
    """

    memory_ids: frozenset[int]
    source_ids: frozenset[str]
    legacy_times: frozenset[datetime]
    scopes: frozenset[str] = frozenset()
    before: datetime | None = None

    @classmethod
    def of(
        cls,
        memories: Iterable[Memory],
        source_ids: Iterable[str] = (),
        *,
        scopes: Iterable[str] = (),
        before: datetime | None = None,
    ) -> ErasureTarget:
        memories = list(memories)
        return cls(
            frozenset(m.id for m in memories),
            frozenset(source_ids) | frozenset(m.source_id for m in memories if m.source_id),
            frozenset(m.created_at for m in memories if m.kind == "exchange"),
            frozenset(scopes),
            before,
        )

    def matches(self, exchange: Exchange) -> bool:
        if self.scopes and exchange.visible_scope in self.scopes:
            return True
        if self.before is not None and exchange.at < self.before:
            return True
        if exchange.memory_id is not None:
            return exchange.memory_id in self.memory_ids
        if exchange.source_id is not None and exchange.source_id in self.source_ids:
            return True
        return exchange.at in self.legacy_times

    @property
    def anywhere(self) -> bool:
        """Whether matching exchanges may be in any stored state (a scope or an age matches
        exchanges that no memory dates)."""
        return bool(self.scopes) or self.before is not None

    @property
    def earliest(self) -> datetime | None:
        """No stored state older than the oldest forgotten exchange can quote it."""
        return min(self.legacy_times, default=None)


def _rewritten(
    recent: tuple[Exchange, ...], target: ErasureTarget, message: str | None
) -> tuple[Exchange, ...] | None:
    """``recent`` without (``message`` None) or with the new message in (an edit) the target's
    exchanges; None when none of them is there."""
    out: list[Exchange] = []
    changed = False
    for exchange in recent:
        if not target.matches(exchange) or exchange.message == message:
            out.append(exchange)
            continue
        changed = True
        if message is not None:
            out.append(dataclasses.replace(exchange, message=message))
    return tuple(out) if changed else None


def without_exchanges(ctx: UserContext, target: ErasureTarget) -> tuple[Exchange, ...] | None:
    """``ctx.recent`` without the target's exchanges, or None when none of them is there."""
    return _rewritten(ctx.recent, target, None)


def edited_exchanges(ctx: UserContext, target: ErasureTarget, message: str) -> tuple[Exchange, ...] | None:
    """``ctx.recent`` with the target's exchanges saying ``message``, or None when none is there."""
    return _rewritten(ctx.recent, target, message)


def redacted_states(
    entries: Iterable[HistoryEntry], target: ErasureTarget, message: str | None = None
) -> list[tuple[int, str]]:
    """(version, new state JSON) of each stored history state that quoted a target exchange:
    without it, or (``message`` given, an edit) with it saying ``message``."""
    changed = []
    for entry in entries:
        kept = _rewritten(entry.context.recent, target, message)
        if kept is not None:
            changed.append((entry.version, entry.context.copy_with(recent=kept).to_json().decode()))
    return changed
