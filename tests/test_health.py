"""/healthz and /metrics over real HTTP, against a real MemorySystem (and a dpytest bot)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import discord.ext.test as dpytest
import pytest
from prometheus_client.parser import text_string_to_metric_families

import memory
from bot.health import GatewayCheck, Health, gateway_problem, judge, memory_probe
from bot.health_server import HealthServer
from bot.metrics import BotMetrics
from bot.timed_memory import TimedMemorySystem
from memory import ConfigError, HashingEncoder, MemorySystem
from tests.bot_fixtures import BotFactory, dm_channel, make_bot, member, sent_messages
from tests.conftest import test_settings

__all__ = ["make_bot"]  # the fixture, imported explicitly


pytestmark = pytest.mark.both_backends  # one behaviour suite, both storage backends


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def serve(system: MemorySystem, gateway: GatewayCheck | None = None, **kwargs: Any) -> HealthServer:
    server = HealthServer(memory_probe(system, gateway), BotMetrics(), host="127.0.0.1", port=0, **kwargs)
    await server.start()
    return server


async def get(http: aiohttp.ClientSession, server: HealthServer, path: str) -> tuple[int, str]:
    async with http.get(f"http://127.0.0.1:{server.port}{path}") as response:
        return response.status, await response.text()


def samples(text: str) -> dict[str, float]:
    """Every sample of the exposition, parsed by prometheus_client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return out


async def test_healthz_is_200_while_running_and_503_with_the_reason_once_closed(
    ms: MemorySystem, http: aiohttp.ClientSession
) -> None:
    server = await serve(ms)
    try:
        assert await get(http, server, "/healthz") == (200, "ok\n")
        await ms.close()
        status, body = await get(http, server, "/healthz")
    finally:
        await server.close()
    assert status == 503
    assert body.startswith("memory system: the memory system is closed")


@pytest.mark.sqlite_only("the snapshot's metrics: PostgreSQL keeps no snapshot")
async def test_metrics_parse_and_carry_the_stats(ms: MemorySystem, http: aiohttp.ClientSession) -> None:
    for user in ("ann", "bo", "cy"):
        await ms.update_context(user, "hello there", "hi")
    await ms.save_memory("ann", "ann keeps bees")
    for user in ("ann", "bo", "cy"):  # their embeddings indexed (their commits may still come)
        await ms.retrieve_memory(user, "bees")
    before = await ms.stats()
    server = await serve(ms)
    try:
        status, text = await get(http, server, "/metrics")
    finally:
        await server.close()
    assert status == 200
    values = samples(text)
    stats = await ms.stats()
    assert values["memorybot_up"] == 1
    assert values["memorybot_users"] == 3
    assert values["memorybot_memories"] == stats["memories"] == 4  # three exchanges and a note
    # A retrieve's embedding commit may land while the page is made: the counter is between.
    assert before["units"] <= values["memorybot_commit_units_total"] <= stats["units"]
    assert values["memorybot_commit_units_total"] >= 4
    assert values["memorybot_commit_queue"] == 0
    assert "memorybot_pending_embeddings" in values
    assert values["memorybot_snapshot_save_failures_total"] == 0
    assert values["memorybot_reply_seconds_count"] == 0  # the histogram exists before any reply


async def test_healthz_is_503_until_the_gateway_is_ready_and_once_it_closed(
    make_bot: BotFactory, http: aiohttp.ClientSession
) -> None:
    bot = await make_bot()
    server = await serve(bot.memory, gateway=bot.gateway_problem, gateway_latency=bot.gateway_latency)
    try:
        # dpytest never marks its client ready (no READY event from a gateway)
        connecting = await get(http, server, "/healthz")
        bot.ws = None  # type: ignore[assignment]  # dpytest's fake websocket has no socket
        await bot.close()
        closed = await get(http, server, "/healthz")
    finally:
        await server.close()
    assert connecting == (503, "Discord gateway: not connected yet (or reconnecting)\n")
    assert closed[0] == 503
    assert "Discord gateway: the connection is closed" in closed[1]


def test_gateway_problems_are_named() -> None:
    assert gateway_problem(closed=False, ready=True, latency=0.05) is None
    assert gateway_problem(closed=True, ready=True, latency=0.05) == "the connection is closed"
    assert "not connected" in (gateway_problem(closed=False, ready=False, latency=0.05) or "")
    assert "heartbeat" in (gateway_problem(closed=False, ready=True, latency=float("inf")) or "")


def test_a_dead_task_in_stats_makes_it_unhealthy_with_the_cause() -> None:
    stats = {
        "state": "failed",
        "tasks": {"commit writer": "died at 2026-12-01T10:00:00+00:00: KeyError: 'x'", "embedder": "running"},
    }
    verdict = judge(stats, None, None)
    assert verdict == Health(
        (
            "the memory system is failed",
            "background task commit writer: died at 2026-12-01T10:00:00+00:00: KeyError: 'x'",
        )
    )
    assert judge({"state": "running", "tasks": {"embedder": "running"}}, None, None).healthy


async def test_healthz_is_503_when_the_commit_writer_dies(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    faults = memory.Faults()
    system = MemorySystem(
        tmp_path / "data", settings=test_settings(), encoder=HashingEncoder(), faults=faults
    )
    await system.start()
    server = await serve(system)
    try:
        assert (await get(http, server, "/healthz"))[0] == 200
        faults.arm(memory.TaskName.COMMIT_WRITER, RuntimeError("injected writer bug"))
        with pytest.raises(memory.MemoryBotError):
            await system.update_context("u1", "hello", "hi")
        status, body = await get(http, server, "/healthz")
        _, metrics = await get(http, server, "/metrics")
    finally:
        await server.close()
        with pytest.raises(memory.MemoryBotError):
            await system.close()  # close() releases everything, then reports the death
    assert status == 503
    assert "background task commit writer: died" in body and "injected writer bug" in body
    values = samples(metrics)
    assert values["memorybot_up"] == 0
    assert values["memorybot_task_up{task=commit writer}"] == 0


async def test_a_busy_port_is_a_clear_config_error(ms: MemorySystem) -> None:
    first = await serve(ms)
    try:
        second = HealthServer(memory_probe(ms), BotMetrics(), host="127.0.0.1", port=first.port)
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{first.port}.*health.port"):
            await second.start()
    finally:
        await first.close()


async def test_metrics_time_retrieve_update_and_whole_replies(
    tmp_path: Path, http: aiohttp.ClientSession, make_bot: BotFactory
) -> None:
    metrics = BotMetrics()
    system = TimedMemorySystem(
        tmp_path / "timed", settings=test_settings(), encoder=HashingEncoder(), metrics=metrics
    )
    await system.start()
    server = HealthServer(memory_probe(system), metrics, host="127.0.0.1", port=0)
    await server.start()
    try:
        await system.update_context("u1", "I keep bees", "Nice")
        await system.update_context("u1", "and goats", "Nice")
        [hit] = await system.retrieve_memory("u1", "bees", 1)
        assert "I keep bees" in hit.memory.text
        assert len(await system.retrieve_memory("u1", "goats", 2)) == 2
        _, text = await get(http, server, "/metrics")
    finally:
        await server.close()
        await system.close()
    values = samples(text)
    assert values["memorybot_update_seconds_count"] == 2
    assert values["memorybot_retrieve_seconds_count"] == 2
    assert values["memorybot_update_seconds_sum"] > 0

    bot = await make_bot()
    await dpytest.message("hello there", channel=await dm_channel(0), member=member(0))
    assert len(sent_messages()) == 1
    assert bot.metrics.registry.get_sample_value("memorybot_reply_seconds_count") == 1
