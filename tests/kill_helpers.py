"""Run the durability worker and kill it with SIGKILL after a chosen number of acks."""

from __future__ import annotations

import os
import random
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import PYTHON, ROOT, subprocess_env


def run_and_kill(data_dir: Path, round_no: int, mode: str, kill_after: int) -> list[tuple[str, str]]:
    """(user, text) of every change the worker acknowledged before it was killed."""
    proc = subprocess.Popen(
        [PYTHON, "-m", "tests.durability_worker", str(data_dir), str(round_no), mode],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    acked: list[tuple[str, str]] = []
    try:
        first = proc.stdout.readline()
        assert first.strip() == "started", first + (proc.stderr.read() if proc.stderr else "")
        while len(acked) < kill_after:
            line = proc.stdout.readline()
            assert line, "the worker died on its own: " + (proc.stderr.read() if proc.stderr else "")
            _, user, _, text = line.rstrip("\n").split(" ", 3)
            acked.append((user, text))
        os.kill(proc.pid, signal.SIGKILL)
        # Acks printed before the kill landed are acknowledged too: read them to the end.
        for line in proc.stdout:
            if line.startswith("ack "):
                _, user, _, text = line.rstrip("\n").split(" ", 3)
                acked.append((user, text))
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return acked


@dataclass(frozen=True)
class KillRound:
    number: int
    acknowledged: list[tuple[str, str]]  # every (user, text) acknowledged so far
    label: str  # the seed and round, to repeat a failure
    rng: random.Random


def kill_rounds(data_dir: Path, mode: str, rounds: int) -> Iterator[KillRound]:
    """Kill the worker at a random moment each round; the caller checks after each."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    acknowledged: list[tuple[str, str]] = []
    for number in range(rounds):
        acknowledged += run_and_kill(data_dir, number, mode, rng.randint(1, 300))
        yield KillRound(number, acknowledged, f"seed {seed}, round {number}", rng)
