"""The stats endpoint every process serves on its own local port."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

JsonStats = Callable[[], dict[str, Any]]


class StatsServer:
    def __init__(self, role: str, name: str, registry: CollectorRegistry, jsonstats: JsonStats) -> None:
        self.role = role
        self.name = name
        self.registry = registry
        self._jsonstats = jsonstats
        self._started = time.time()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/jsonstats", self._json)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "role": self.role, "name": self.name})

    async def _json(self, _: web.Request) -> web.Response:
        body = {"role": self.role, "name": self.name, "uptime_s": round(time.time() - self._started, 3),
                **self._jsonstats()}
        return web.Response(body=msgspec.json.encode(body), content_type="application/json")

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
