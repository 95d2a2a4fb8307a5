"""Run the bot as several processes, each a group of Discord shards, on one PostgreSQL memory.

``python -m bot.sharded --processes 2`` (``make run-sharded``) starts the local cluster of
``memory.storage.pgcluster`` unless ``MEMORY_BOT_STORAGE_POSTGRES_URL`` names a server, then one bot
process per shard group with ``storage.backend = postgres`` and its ``bot.shard_ids``. Ctrl-C
(or SIGTERM) stops them all; the first to fail stops the rest. Each process is an ordinary
``python -m bot``: its own health endpoint needs its own port (``--health-port-base``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from bot.__main__ import EXIT_CONFIG, EXIT_INTERRUPTED, TOKEN_VARIABLE
from memory.errors import LocalClusterError
from memory.storage.pgcluster import DEFAULT_FOLDER, LocalCluster

URL_VARIABLE = "MEMORY_BOT_STORAGE_POSTGRES_URL"
STOP_GRACE_SECONDS = 30.0


def shard_groups(processes: int, shards: int) -> list[list[int]]:
    """Shard ids 0..shards-1 dealt to ``processes`` groups as evenly as possible (shard 0, where
    DMs arrive, in the first)."""
    if processes < 1 or shards < processes:
        raise ValueError(
            f"need at least one shard per process: {shards} shard(s) for {processes} process(es)"
        )
    return [list(range(first, shards, processes)) for first in range(processes)]


def process_environments(
    base: Mapping[str, str], url: str, groups: Sequence[Sequence[int]], health_port_base: int
) -> list[dict[str, str]]:
    """One environment per bot process: the shared memory, its shards, its own health port."""
    shards = sum(len(g) for g in groups)
    envs = []
    for number, group in enumerate(groups):
        env = dict(base)
        env["MEMORY_BOT_STORAGE_BACKEND"] = "postgres"
        env[URL_VARIABLE] = url
        env["MEMORY_BOT_BOT_SHARD_COUNT"] = str(shards)
        env["MEMORY_BOT_BOT_SHARD_IDS"] = ",".join(str(s) for s in group)
        if health_port_base:
            env["MEMORY_BOT_HEALTH_PORT"] = str(health_port_base + number)
        envs.append(env)
    return envs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot.sharded",
        description="Several bot processes (shard groups) on one PostgreSQL memory.",
        epilog="Example: DISCORD_TOKEN=... python -m bot.sharded --processes 2",
    )
    parser.add_argument("--processes", type=int, default=2, help="bot processes to run (default 2)")
    parser.add_argument(
        "--shards", type=int, default=0, help="total Discord shards (default: one per process)"
    )
    parser.add_argument(
        "--pg-folder",
        type=Path,
        default=DEFAULT_FOLDER,
        help=f"the local cluster's folder (default {DEFAULT_FOLDER})",
    )
    parser.add_argument(
        "--health-port-base",
        type=int,
        default=0,
        help="process n serves /healthz on this port + n (default: off)",
    )
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = dict(os.environ if environ is None else environ)
    if not env.get(TOKEN_VARIABLE, "").strip():
        print(
            f"bot.sharded: set {TOKEN_VARIABLE}: shards are Discord's "
            "(the console chat is one process: make run)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        groups = shard_groups(args.processes, args.shards or args.processes)
    except ValueError as exc:
        print(f"bot.sharded: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    url = env.get(URL_VARIABLE, "")
    if not url:
        try:
            cluster = LocalCluster(args.pg_folder)
            cluster.init()
            cluster.start()
        except LocalClusterError as exc:
            print(f"bot.sharded: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        url = cluster.url()
    envs = process_environments(env, url, groups, args.health_port_base)
    children = [subprocess.Popen([sys.executable, "-m", "bot", "--mode", "discord"], env=e) for e in envs]
    return _supervise(children)


def _supervise(children: list[subprocess.Popen[bytes]]) -> int:
    """Wait for the children; a signal, or the first to exit, stops them all (SIGTERM, then
    SIGKILL after ``STOP_GRACE_SECONDS``). The exit code is the first failure's."""
    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    code = 0
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.2)  # a supervisor's poll of its children, not a test's wait
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in children:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        code = code or (child.returncode if child.returncode not in (None, -signal.SIGTERM) else 0)
    return EXIT_INTERRUPTED if stopping and not code else code


if __name__ == "__main__":
    sys.exit(main())
