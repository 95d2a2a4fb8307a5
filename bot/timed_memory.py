"""A MemorySystem that times its retrieve and update calls into the bot's histograms.

The chat pipeline and the library stay free of metrics; the bot builds this subclass instead
of a plain MemorySystem, and ``/metrics`` shows the latency of the two calls every message
makes. Arguments pass through untouched, so new parameters of the library need no change here.
"""

from __future__ import annotations

from typing import Any

from bot.metrics import BotMetrics, Timer
from memory import MemorySystem, ScoredMemory, UserContext


class TimedMemorySystem(MemorySystem):
    """``MemorySystem(...)`` plus ``metrics``: observes retrieve_memory and update_context."""

    def __init__(self, *args: Any, metrics: BotMetrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = metrics

    async def retrieve_memory(self, *args: Any, **kwargs: Any) -> list[ScoredMemory]:
        with Timer(self.metrics.retrieve_seconds.observe):
            return await super().retrieve_memory(*args, **kwargs)

    async def update_context(self, *args: Any, **kwargs: Any) -> UserContext:
        with Timer(self.metrics.update_seconds.observe):
            return await super().update_context(*args, **kwargs)
