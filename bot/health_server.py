"""The HTTP endpoint for operators: ``/healthz`` and ``/metrics`` on 127.0.0.1 by default.

aiohttp (already under discord.py) serves both on the bot's own event loop, so a health check
sees exactly the state the bot runs on; a service manager or Docker's HEALTHCHECK polls it.
"""

from __future__ import annotations

import logging

from aiohttp import web

from bot import health
from bot.metrics import CONTENT_TYPE, BotMetrics
from memory import ConfigError

log = logging.getLogger(__name__)


class HealthServer:
    """Serves the verdict of ``probe`` (see :func:`bot.health.memory_probe`) and the metrics."""

    def __init__(
        self,
        probe: health.Probe,
        metrics: BotMetrics,
        *,
        host: str,
        port: int,
        gateway_latency: health.LatencyProbe | None = None,
    ) -> None:
        self.probe = probe
        self.metrics = metrics
        self.host = host
        self.port = port
        self._gateway_latency = gateway_latency
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Listen; returns the bound port (``port = 0`` picks a free one)."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"the health endpoint cannot listen on {self.host}:{self.port} "
                f'({exc.strerror or exc}); set health.port to a free port, or health.enabled = "off"'
            ) from exc
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("health endpoint on http://%s:%d/healthz and /metrics", self.host, self.port)
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _check(self) -> health.Health:
        verdict, stats = await self.probe()
        latency = self._gateway_latency() if self._gateway_latency else None
        self.metrics.stats.update(stats, verdict, latency)
        return verdict

    async def _healthz(self, request: web.Request) -> web.Response:
        verdict = await self._check()
        if not verdict.healthy:
            log.info("health check failed: %s", verdict.describe())
        return web.Response(status=200 if verdict.healthy else 503, text=verdict.describe() + "\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        await self._check()
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})
