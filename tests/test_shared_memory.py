"""Several processes on one PostgreSQL memory: exact counts, coherent caches, nothing lost.

Each child process is a real ``MemorySystem`` (tests/shared_worker.py) with its own pool, writer
and LISTEN connection, as a bot shard would have.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest

from memory import HashingEncoder, MemorySystem
from memory.changes import ContextCache
from tests.conftest import PYTHON, ROOT, subprocess_env, test_settings

USERS = 100


def _system(url: str) -> MemorySystem:
    settings = test_settings(storage={"backend": "postgres", "postgres_url": url})
    return MemorySystem("unused-data-folder", settings=settings, encoder=HashingEncoder())


@contextmanager
def _worker(url: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [PYTHON, "-m", "tests.shared_worker", url, *args],
        cwd=ROOT,
        env=subprocess_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.strip() == "started", first + (proc.stderr.read() if proc.stderr else "")
        yield proc
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _acks(proc: subprocess.Popen[str]) -> Counter[str]:
    """The users of every acknowledged update, read until the worker says it is done."""
    assert proc.stdout is not None
    acked: Counter[str] = Counter()
    for line in proc.stdout:
        if line.strip() == "done":
            return acked
        assert line.startswith("ack "), line
        acked[line.split()[1]] += 1
    raise AssertionError("the worker died: " + (proc.stderr.read() if proc.stderr else ""))


@pytest.mark.parametrize("processes", [2, 4])
async def test_processes_updating_the_same_users_count_exactly(
    processes: int, make_postgres_database: Callable[[], str]
) -> None:
    url = make_postgres_database()
    callers, rounds = 20, 15
    with ExitStack() as stack:
        workers = [
            stack.enter_context(_worker(url, "updates", f"p{n}", str(callers), str(rounds), str(USERS)))
            for n in range(processes)
        ]
        totals = sum(await asyncio.gather(*(asyncio.to_thread(_acks, w) for w in workers)), Counter[str]())
    assert sum(totals.values()) == processes * callers * rounds
    async with _system(url) as ms:
        for uid, count in totals.items():
            ctx = await ms.get_user_context(uid)
            assert (ctx.conversations_count, ctx.version) == (count, count), uid
            assert len(await ms.history(uid)) == count
            assert await ms.count_memories(uid) == count  # one exchange memory per update
        assert sorted(await ms.list_users()) == sorted(totals)
        stats = await ms.stats()
        assert stats["memories"] == stats["history_rows"] == sum(totals.values())


async def test_a_change_in_one_process_is_built_on_in_another(postgres_url: str) -> None:
    async with _system(postgres_url) as a, _system(postgres_url) as b:
        await b.get_user_context("alice")  # b caches alice as new before a writes her
        for i in range(5):
            await a.update_context("alice", f"message {i}", "ok", display_name="Alice")
        # b's cached alice is stale, whatever its notifications say yet: the version check
        # makes its change a conflict, and it is rebuilt on what a wrote.
        after = await b.set_preference("alice", "music", "jazz")
        assert (after.version, after.conversations_count, after.display_name) == (6, 5, "Alice")
        assert dict(after.preferences) == {"music": "jazz"}
        forgotten = await a.forget_user("alice")
        assert forgotten is True
        again = await b.update_context("alice", "hello again", "hi")
        assert (again.version, again.conversations_count, dict(again.preferences)) == (1, 1, {})
        assert [e.version for e in await a.history("alice")] == [1]


async def test_a_memory_saved_in_one_process_is_found_in_another(postgres_url: str) -> None:
    text = "my grandmother grew saffron crocuses"
    with _worker(postgres_url, "remember", "p1", "alice", text) as proc:
        assert proc.stdout is not None
        assert (await asyncio.to_thread(proc.stdout.readline)).strip() == "embedded"
        async with _system(postgres_url) as ms:
            results = await ms.retrieve_memory("alice", "saffron")
            assert [r.memory.text for r in results] == [text]
            assert results[0].lexical_score is not None  # found by its words at once
            assert results[0].dense_score is not None and results[0].dense_score > 0  # and by its vector
            assert await ms.retrieve_memory("bob", "saffron") == []
        assert proc.stdin is not None
        proc.stdin.write("bye\n")
        proc.stdin.flush()


def _stream_acks(
    proc: subprocess.Popen[str], wanted: int, acked: list[tuple[str, str]], errors: list[str]
) -> None:
    """Read acks into ``acked`` until ``wanted`` of them (or the worker's end)."""
    assert proc.stdout is not None
    while len(acked) < wanted:
        line = proc.stdout.readline()
        if not line:
            return
        kind, _, rest = line.rstrip("\n").partition(" ")
        if kind == "ack":
            user, text = rest.split(" ", 1)
            acked.append((user, text))
        else:
            errors.append(rest)


async def _all_present(url: str, acked: list[tuple[str, str]]) -> None:
    async with _system(url) as ms:
        by_user: dict[str, set[str]] = {}
        for user, _ in acked:
            if user not in by_user:
                by_user[user] = {m.text.split("\n")[0].split(": ", 1)[1] for m in await ms.get_memories(user)}
        missing = [(u, t) for u, t in acked if t not in by_user[u]]
        assert missing == [], f"{len(missing)} acknowledged updates lost, e.g. {missing[:3]}"
        for user in by_user:
            ctx = await ms.get_user_context(user)
            assert ctx.conversations_count == ctx.version == len(await ms.history(user))


async def test_kill_9_of_a_worker_mid_stream_loses_no_acknowledged_update(postgres_url: str) -> None:
    acked: list[tuple[str, str]] = []
    for round_no in range(3):
        with _worker(postgres_url, "stream", f"r{round_no}") as proc:
            errors: list[str] = []
            await asyncio.to_thread(_stream_acks, proc, len(acked) + 200 + 97 * round_no, acked, errors)
            os.kill(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(_stream_acks, proc, 10**9, acked, errors)  # acks before the kill landed
            proc.wait()
            assert proc.returncode == -signal.SIGKILL and errors == []
        await _all_present(postgres_url, acked)


async def test_a_server_crash_mid_stream_loses_no_acknowledged_update(
    postgres_url: str, restart_postgres: Callable[[], None]
) -> None:
    acked: list[tuple[str, str]] = []
    errors: list[str] = []
    with _worker(postgres_url, "stream", "crash") as proc:
        await asyncio.to_thread(_stream_acks, proc, 300, acked, errors)
        reader = threading.Thread(target=_stream_acks, args=(proc, 10**9, acked, errors), daemon=True)
        reader.start()
        await asyncio.to_thread(restart_postgres)  # pg_ctl stop -m immediate, then start
        before = len(acked)
        # The worker reconnects by itself: acknowledged updates go on after the restart.
        while len(acked) < before + 300:
            assert reader.is_alive(), "the worker died: " + (proc.stderr.read() if proc.stderr else "")
            await asyncio.to_thread(reader.join, 0.1)
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(reader.join)
    await _all_present(postgres_url, acked)


async def test_after_missed_notifications_every_cached_version_is_checked_in_one_query(
    postgres_url: str,
) -> None:
    async with _system(postgres_url) as a, _system(postgres_url) as b:
        for uid in ("alice", "bob", "carol"):
            await a.update_context(uid, "hello", "hi")
        await b.list_users()  # b has them cached (as their notifications arrive, or reloads)
        cache = ContextCache(b._store)  # a cache on b's store as after a reconnect: not notified
        cache.load(
            [(ctx, ctx.to_json()) for ctx in [await b.get_user_context(u) for u in ("alice", "bob", "carol")]]
        )
        await a.update_context("alice", "again", "hi")  # missed by this cache
        cache.mark_stale(None)  # what the store says after its LISTEN connection came back
        await cache.fresh("bob")  # one query checks every cached version; bob is current
        assert cache.reloads == 0
        await cache.fresh("alice")  # alice was found stale by that query: reloaded when read
        assert cache.reloads == 1
        alice = cache.get("alice")
        assert alice is not None and alice.version == 2


async def test_a_large_users_faiss_shard_ranks_as_the_exact_scan_and_follows_other_processes(
    postgres_url: str,
) -> None:
    def system(threshold: int) -> MemorySystem:
        storage = {"backend": "postgres", "postgres_url": postgres_url, "faiss_shard_threshold": threshold}
        return MemorySystem(
            "unused-data-folder", settings=test_settings(storage=storage), encoder=HashingEncoder()
        )

    words = ["river", "garden", "violin", "harbour", "comet", "orchard", "lantern", "falcon"]
    async with system(5) as sharded, system(1_000_000) as exact:
        for i in range(40):
            await exact.save_memory("alice", f"{words[i % 8]} {words[(i * 3) % 8]} note {i}")
        await exact.save_memory("bob", "river garden violin")  # another user's: never a result
        queries = ["river violin", "comet orchard lantern", "falcon harbour"]
        for query in queries:
            got = await sharded.retrieve_memory("alice", query, k=10)
            want = await exact.retrieve_memory("alice", query, k=10)
            assert [(r.memory.id, r.dense_score) for r in got] == [(r.memory.id, r.dense_score) for r in want]
            assert all(r.memory.user_id == "alice" for r in got)
        assert (await sharded.stats())["shard_loads"] == 1  # one shard, reused while current
        # Another process adds and forgets: the shard follows the database, not its cache.
        added = await exact.save_memory("alice", "saffron crocus meadow")
        assert [r.memory.id for r in await exact.retrieve_memory("alice", "saffron", k=1)] == [added.id]
        found = await sharded.retrieve_memory("alice", "saffron crocus meadow", k=1)
        assert [r.memory.id for r in found] == [added.id] and found[0].dense_score is not None
        await exact.forget_memory("alice", added.id)
        assert all(r.memory.id != added.id for r in await sharded.retrieve_memory("alice", "saffron", k=10))
