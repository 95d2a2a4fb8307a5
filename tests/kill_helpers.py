"""Run the durability worker and kill it with SIGKILL after a chosen number of acks."""

from __future__ import annotations

import os
import signal
import subprocess
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
