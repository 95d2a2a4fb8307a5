"""What a forget must reach besides the memory rows: the exchanges that quote the forgotten text.

An exchange lives in the context's ``recent`` tuple and, through it, in every history state
stored while it was recent. A forget removes it from both, so the text survives nowhere: not in
the snapshot (written from the contexts), an export (read from the store) or a prompt.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from memory.context import Exchange, UserContext
from memory.records import HistoryEntry, Memory


@dataclass(frozen=True, slots=True)
class ErasureTarget:
    """The memories and sources being forgotten, and how to recognise their exchanges.

    Exchanges stored before they carried a memory id are recognised by the time of their
    exchange memory (both are stamped with the same instant).
    """

    memory_ids: frozenset[int]
    source_ids: frozenset[str]
    legacy_times: frozenset[datetime]

    @classmethod
    def of(cls, memories: Iterable[Memory], source_ids: Iterable[str] = ()) -> ErasureTarget:
        memories = list(memories)
        return cls(
            frozenset(m.id for m in memories),
            frozenset(source_ids) | frozenset(m.source_id for m in memories if m.source_id),
            frozenset(m.created_at for m in memories if m.kind == "exchange"),
        )

    def matches(self, exchange: Exchange) -> bool:
        if exchange.memory_id is not None:
            return exchange.memory_id in self.memory_ids
        if exchange.source_id is not None and exchange.source_id in self.source_ids:
            return True
        return exchange.at in self.legacy_times

    @property
    def earliest(self) -> datetime | None:
        """No stored state older than the oldest forgotten exchange can quote it."""
        return min(self.legacy_times, default=None)


def without_exchanges(ctx: UserContext, target: ErasureTarget) -> tuple[Exchange, ...] | None:
    """``ctx.recent`` without the target's exchanges, or None when none of them is there."""
    kept = tuple(e for e in ctx.recent if not target.matches(e))
    return kept if len(kept) != len(ctx.recent) else None


def redacted_states(entries: Iterable[HistoryEntry], target: ErasureTarget) -> list[tuple[int, str]]:
    """(version, new state JSON) of each stored history state that quoted a forgotten exchange."""
    changed = []
    for entry in entries:
        kept = without_exchanges(entry.context, target)
        if kept is not None:
            changed.append((entry.version, entry.context.copy_with(recent=kept).to_json().decode()))
    return changed
