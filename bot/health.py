"""Is the bot healthy? One function reads ``MemorySystem.stats()`` and the gateway and decides.

Kept apart from the HTTP server so that what "healthy" means lives in one place: the
``/healthz`` endpoint, the owner's ``stats`` command and the metrics all ask it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from memory import MemoryBotError, MemorySystem

# Task states (from stats()["tasks"]) that mean the task is doing its job; any other text
# ("died at ...: KeyError ...", "stopped: the commit writer it relies on died") is the reason.
ALIVE_TASK_STATES = frozenset({"running", "idle", "starting", "ok", "alive"})
# States of stats()["integrity_check"] that need the operator: damage found (writes are
# refused), or the check could not run at all.
INTEGRITY_PROBLEMS = frozenset({"damaged", "failed"})
# Lifecycle states (stats()["state"], when present) in which the system serves calls.
SERVING_STATES = frozenset({"running"})
GatewayCheck = Callable[[], str | None]
LatencyProbe = Callable[[], float | None]
Probe = Callable[[], Awaitable[tuple["Health", dict[str, Any] | None]]]


@dataclass(frozen=True, slots=True)
class Health:
    """Healthy when no reason says otherwise; ``reasons`` are one line each, for operators."""

    reasons: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return not self.reasons

    def describe(self) -> str:
        return "ok" if self.healthy else "; ".join(self.reasons)


def task_problems(stats: Mapping[str, Any]) -> list[str]:
    """One line per background task that is not alive, from ``stats()["tasks"]``.

    A task's entry is its state (``"running"``) or a mapping with ``state`` and ``error``.
    """
    tasks = stats.get("tasks") or {}
    problems = []
    state = stats.get("state")
    if state is not None and str(state).lower() not in SERVING_STATES:
        problems.append(f"the memory system is {state}")
    for name, entry in sorted(tasks.items()):
        if isinstance(entry, Mapping):
            state, error = str(entry.get("state", "unknown")), entry.get("error")
        else:
            state, error = str(entry), None
        if state.lower() not in ALIVE_TASK_STATES:
            problems.append(task_reason(str(name), state + (f": {error}" if error else "")))
    return problems


def task_reason(name: str, state: str) -> str:
    return f"background task {name}: {state}"


def judge(stats: Mapping[str, Any] | None, memory_problem: str | None, gateway_problem: str | None) -> Health:
    """The verdict from a stats() snapshot (None when it failed, with ``memory_problem``)."""
    reasons = []
    if memory_problem:
        reasons.append(f"memory system: {memory_problem}")
    if stats is not None:
        reasons += task_problems(stats)
        check_state = stats.get("integrity_check")  # SQLite's check after start
        if check_state in INTEGRITY_PROBLEMS:
            reasons.append(f"database integrity check {check_state}: {stats.get('integrity_problem')}")
    if gateway_problem:
        reasons.append(f"Discord gateway: {gateway_problem}")
    return Health(tuple(reasons))


async def check(
    memory: MemorySystem, gateway: GatewayCheck | None = None
) -> tuple[Health, dict[str, Any] | None]:
    """Ask the memory system for its stats and the gateway for its state; never raises."""
    stats: dict[str, Any] | None
    try:
        stats = await memory.stats()
        problem = None
    except MemoryBotError as exc:  # closed, failed, or a task died: exactly what to report
        stats, problem = None, str(exc)
    return judge(stats, problem, gateway() if gateway else None), stats


def memory_probe(memory: MemorySystem, gateway: GatewayCheck | None = None) -> Probe:
    """A probe for the HTTP endpoint: :func:`check` of this memory system (and gateway)."""

    async def probe() -> tuple[Health, dict[str, Any] | None]:
        return await check(memory, gateway)

    return probe


def gateway_problem(*, closed: bool, ready: bool, latency: float) -> str | None:
    """What is wrong with a discord.py client's connection, from its public state."""
    if closed:
        return "the connection is closed"
    if not ready:
        return "not connected yet (or reconnecting)"
    if not math.isfinite(latency):
        return "no heartbeat acknowledged"
    return None
