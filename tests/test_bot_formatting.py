"""Message splitting, friendly errors and the rate limiter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.formatting import DISCORD_LIMIT, ActionError, friendly_error, split_message
from bot.rate_limit import RateLimiter
from memory import InvalidInputError, MemoryNotFoundError, SystemClosedError
from tests.bot_fixtures import FakeClock


@given(st.text(max_size=9000))
def test_split_parts_fit_discord_and_keep_the_words(text: str) -> None:
    parts = split_message(text)
    assert all(0 < len(p) <= DISCORD_LIMIT for p in parts)
    assert len(parts) <= 4
    if len(text) <= 3 * DISCORD_LIMIT:
        assert "".join("".join(parts).split()) == "".join(text.split())


def test_a_huge_reply_is_trimmed_with_a_note() -> None:
    parts = split_message("y" * 20_000)
    assert len(parts) == 4
    assert parts[-1].endswith("(reply trimmed)")


def test_friendly_errors_are_short_and_specific() -> None:
    assert friendly_error(ActionError("Nope.")) == "Nope."
    assert "#4" in friendly_error(MemoryNotFoundError("u", 4))
    assert "restarting" in friendly_error(SystemClosedError("closed"))
    assert "at most 4000" in friendly_error(InvalidInputError("text", "must be at most 4000"))
    assert "log" in friendly_error(RuntimeError("boom"))


def test_rate_limiter_allows_a_window_per_key() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, 10, clock=clock)
    assert limiter.hit("a").allowed and limiter.hit("a").allowed
    refused = limiter.hit("a")
    assert not refused.allowed and refused.notify and refused.retry_after == pytest.approx(10)
    assert not limiter.hit("a").notify  # warned once only
    assert limiter.hit("b").allowed
    clock.now += 10
    assert limiter.hit("a").allowed


def test_rate_limiter_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_events"):
        RateLimiter(0, 1)
