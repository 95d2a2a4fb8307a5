"""A circuit breaker: after N failures in a row, stop calling a dead service for a cool-down.

Without it an LLM outage costs the full timeout on every message; with it the first N messages
pay it, the next ones get the fallback at once, and one call per cool-down probes the service.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class BreakerState(enum.Enum):
    CLOSED = "closed"  # calls go through
    OPEN = "open"  # calls are refused until the cool-down ends
    HALF_OPEN = "half-open"  # one trial call is let through


class CircuitBreaker:
    """Counts consecutive failures; ``allow()`` says whether to try the service now."""

    def __init__(
        self, failures: int, cooldown: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failures < 1 or cooldown <= 0:
            raise ValueError(f"need failures >= 1 and cooldown > 0, got {failures}, {cooldown}")
        self.threshold = failures
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False
        self.trips = 0

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.cooldown:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """True when a call may go out; in half-open state only one call at a time does."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_running:
            self._trial_running = True
            return True
        return False

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_running = False

    def abandoned(self) -> None:
        """A call ended with neither success nor failure (cancelled): let another one try."""
        self._trial_running = False

    def failed(self) -> None:
        self._failures += 1
        self._trial_running = False
        if self._opened_at is not None or self._failures >= self.threshold:
            if self._opened_at is None:
                self.trips += 1
            self._opened_at = self._clock()  # a failed trial starts a new cool-down
