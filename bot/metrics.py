"""Prometheus metrics: the bot's own histograms plus a snapshot of ``MemorySystem.stats()``.

Each bot has its own registry (no global state, so two bots in one test never clash). The
stats gauges are read at scrape time: ``/metrics`` awaits ``stats()`` and hands the snapshot
to :class:`StatsCollector` before rendering.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.health import Health, task_reason

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "memorybot_"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# stats() key -> (metric name, help); counters end in _total in the exposition.
GAUGES = {
    "users": ("users", "Users with a context in memory."),
    "memories": ("memories", "Stored memories."),
    "history_rows": ("history_rows", "Stored context history rows."),
    "pending_embeddings": ("pending_embeddings", "Memories waiting for their embedding."),
    "commit_queue": ("commit_queue", "Changes waiting for the group-commit writer."),
    "largest_batch": ("largest_commit_batch", "Most changes committed in one transaction."),
    "index_vectors": ("index_vectors", "Vectors in the FAISS index."),
    "user_locks_held": ("user_locks_held", "User locks held right now."),
    "encoder_queue": ("encoder_queue", "Texts waiting for the embedding model."),
    "encoder_mean_batch": ("encoder_mean_batch", "Mean texts per embedding model call."),
    "encoder_largest_batch": ("encoder_largest_batch", "Most texts in one embedding model call."),
}
COUNTERS = {
    "batches": ("commit_batches", "Transactions committed by the group-commit writer."),
    "units": ("commit_units", "Changes committed by the group-commit writer."),
    "saves": ("snapshot_saves", "JSON snapshot writes."),
    "save_failures": ("snapshot_save_failures", "JSON snapshot writes that failed."),
    "embedded_since_start": ("embedded", "Memories embedded since start."),
    "encoder_batches": ("encoder_batches", "Embedding model calls."),
}


class StatsCollector(Collector):
    """Turns the last stats() snapshot (and health verdict) into Prometheus families."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._stats: Mapping[str, Any] = {}
        self._health = Health(("not checked yet",))
        self._gateway_latency: float | None = None
        self._clock = clock

    def update(self, stats: Mapping[str, Any] | None, health: Health, gateway_latency: float | None) -> None:
        self._stats = stats or {}
        self._health = health
        self._gateway_latency = gateway_latency

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        yield GaugeMetricFamily(
            PREFIX + "up", "1 when /healthz reports healthy.", value=int(self._health.healthy)
        )
        for key, (name, doc) in GAUGES.items():
            if isinstance(stats.get(key), int | float):
                yield GaugeMetricFamily(PREFIX + name, doc, value=float(stats[key]))
        for key, (name, doc) in COUNTERS.items():
            if isinstance(stats.get(key), int | float):
                yield CounterMetricFamily(PREFIX + name, doc, value=float(stats[key]))
        last_save = stats.get("last_save")
        if isinstance(last_save, str):
            age = (self._clock() - datetime.fromisoformat(last_save)).total_seconds()
            yield GaugeMetricFamily(
                PREFIX + "last_save_age_seconds", "Seconds since the last snapshot write.", value=age
            )
        tasks = stats.get("tasks")
        if isinstance(tasks, Mapping):
            family = GaugeMetricFamily(
                PREFIX + "task_up", "1 for each background task that is alive.", labels=["task"]
            )
            for name in sorted(tasks):
                dead = task_reason(str(name), "")
                alive = not any(reason.startswith(dead) for reason in self._health.reasons)
                family.add_metric([str(name)], int(alive))
            yield family
        if self._gateway_latency is not None:
            yield GaugeMetricFamily(
                PREFIX + "gateway_latency_seconds",
                "Discord heartbeat latency.",
                value=self._gateway_latency,
            )


class BotMetrics:
    """The registry a bot serves on /metrics, and the histograms its cogs observe."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stats = StatsCollector()
        self.registry.register(self.stats)
        self.reply_seconds = Histogram(
            PREFIX + "reply_seconds",
            "Time to answer one chat message (retrieve, reply, update_context).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.retrieve_seconds = Histogram(
            PREFIX + "retrieve_seconds",
            "Time of one MemorySystem.retrieve_memory call.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.update_seconds = Histogram(
            PREFIX + "update_seconds",
            "Time of one MemorySystem.update_context call (durable on return).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Timer:
    """``with Timer(histogram):`` observes the block's duration, even when it raises."""

    def __init__(self, observe: Callable[[float], None]) -> None:
        self._observe = observe
        self._started = 0.0

    def __enter__(self) -> Timer:
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._observe(time.perf_counter() - self._started)
