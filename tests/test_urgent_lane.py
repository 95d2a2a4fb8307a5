"""The encoder's urgent lane (memory/urgent_lane.py): answered from its thread, batched while busy,
never stranding a caller, closed cleanly. A held model call (threading events) makes each case
happen for certain instead of by timing."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from memory import HashingEncoder
from memory.errors import EncoderError, SystemClosedError
from memory.urgent_lane import UrgentLane, Vectors


class HeldModel:
    """Hashing vectors; each call is recorded, signals that it started, and waits to be let go."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail_next = False

    def __call__(self, texts: list[str]) -> Vectors:
        self.calls.append(texts)
        self.started.set()
        assert self.release.wait(30), "the test never let the model call go"
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the model broke")
        return HashingEncoder(32).encode_now(texts)


async def until(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 30)


@pytest.fixture
def lane() -> tuple[UrgentLane, HeldModel]:
    model = HeldModel()
    built = UrgentLane("test-urgent", batch_size=8)
    built.start(model)
    return built, model


async def test_requests_queued_while_busy_share_the_next_call_each_getting_its_rows(
    lane: tuple[UrgentLane, HeldModel],
) -> None:
    urgent, model = lane
    first = asyncio.ensure_future(urgent.encode(["first"]))
    await until(model.started)
    waiting = [asyncio.ensure_future(urgent.encode([f"q{i}", f"m{i}"])) for i in range(3)]
    await asyncio.sleep(0)  # the three are queued behind the call in hand
    model.release.set()
    answers = await asyncio.gather(first, *waiting)
    assert model.calls == [["first"], ["q0", "m0", "q1", "m1", "q2", "m2"]]
    for i, rows in enumerate(answers[1:]):
        assert np.allclose(rows, HashingEncoder(32).encode_now([f"q{i}", f"m{i}"]))
    assert urgent.batches == 2
    await urgent.close()


async def test_a_cancelled_caller_leaves_the_others_answered(lane: tuple[UrgentLane, HeldModel]) -> None:
    urgent, model = lane
    gone = asyncio.ensure_future(urgent.encode(["cancelled"]))
    await until(model.started)
    kept = asyncio.ensure_future(urgent.encode(["kept"]))
    await asyncio.sleep(0)
    gone.cancel()
    model.release.set()
    assert np.allclose(await kept, HashingEncoder(32).encode_now(["kept"]))
    assert gone.cancelled()
    await urgent.close()


async def test_a_failed_call_fails_its_callers_only_and_the_lane_goes_on(
    lane: tuple[UrgentLane, HeldModel],
) -> None:
    urgent, model = lane
    model.fail_next = True
    model.release.set()
    with pytest.raises(EncoderError, match="the model broke"):
        await urgent.encode(["breaks"])
    assert np.allclose(await urgent.encode(["works"]), HashingEncoder(32).encode_now(["works"]))
    await urgent.close()


async def test_close_fails_the_queued_and_answers_the_call_in_hand(
    lane: tuple[UrgentLane, HeldModel],
) -> None:
    urgent, model = lane
    in_hand = asyncio.ensure_future(urgent.encode(["in hand"]))
    await until(model.started)
    queued = asyncio.ensure_future(urgent.encode(["queued"]))
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(urgent.close())
    with pytest.raises(SystemClosedError):  # failed at once, the call in hand still held
        await queued
    assert not in_hand.done()
    model.release.set()
    await closing
    assert np.allclose(await in_hand, HashingEncoder(32).encode_now(["in hand"]))
    with pytest.raises(SystemClosedError, match="closed"):
        await urgent.encode(["after close"])
    assert model.calls == [["in hand"]]
