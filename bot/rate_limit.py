"""A per-person sliding-window rate limit, with an injectable clock for tests."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

MAX_TRACKED = 10_000


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Whether one event may go ahead; ``notify`` is True only for the first refusal in a row."""

    allowed: bool
    retry_after: float = 0.0
    notify: bool = False


class RateLimiter:
    """At most ``max_events`` per ``per_seconds`` for each key."""

    def __init__(
        self, max_events: int, per_seconds: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_events < 1 or per_seconds <= 0:
            raise ValueError("max_events must be >= 1 and per_seconds > 0")
        self.max_events = max_events
        self.per_seconds = per_seconds
        self._clock = clock
        self._events: dict[Hashable, deque[float]] = {}
        self._warned: set[Hashable] = set()

    def hit(self, key: Hashable) -> RateDecision:
        """Count one event for ``key`` if the window has room."""
        now = self._clock()
        window = self._events.get(key)
        if window is None:
            if len(self._events) >= MAX_TRACKED:
                self._prune(now)
            window = self._events[key] = deque()
        while window and window[0] <= now - self.per_seconds:
            window.popleft()
        if len(window) < self.max_events:
            window.append(now)
            self._warned.discard(key)
            return RateDecision(True)
        retry_after = window[0] + self.per_seconds - now
        notify = key not in self._warned
        self._warned.add(key)
        return RateDecision(False, retry_after, notify)

    def _prune(self, now: float) -> None:
        stale = [k for k, w in self._events.items() if not w or w[-1] <= now - self.per_seconds]
        for key in stale:
            del self._events[key]
            self._warned.discard(key)


def rate_limited_reply(decision: RateDecision) -> str:
    seconds = max(1, round(decision.retry_after))
    return f"You're talking faster than I can think! Give me {seconds} s and try again."
