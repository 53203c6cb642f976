"""The stats endpoint every process serves on its own port: /healthz, /jsonstats, /metrics and /dashboard.

The port is bound to loopback unless configured otherwise; bound elsewhere it needs a token, and then
/jsonstats and /metrics answer only requests carrying `Authorization: Bearer <token>`. The dashboard's files
hold no data (its script reads /jsonstats with the token from the page's `#token=` fragment), so they are
served to anyone who can reach the port, with a policy that lets the page load nothing from elsewhere.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cocoon.config import ConfigError, is_loopback

JsonStats = Callable[[], dict[str, Any]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}
# The page may talk to its own origin only: no CDN, font, image or beacon from anywhere else.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


async def listen(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0: a free port); its runner (cleanup() stops it) and the port bound."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def dashboard_file(name: str) -> bytes:
    return resources.files("cocoon.observe").joinpath("dashboard", name).read_bytes()


def add_dashboard_routes(app: web.Application) -> None:
    """/dashboard (the page) and its script and style, from the package's data."""
    page = dashboard_file("index.html")
    assets = {name: dashboard_file(name) for name in _ASSETS}

    async def index(_: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS)

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in assets:
            raise web.HTTPNotFound()
        return web.Response(body=assets[name], content_type=_ASSETS[name], charset="utf-8", headers=SECURITY_HEADERS)

    app.router.add_get("/", _to_dashboard)
    app.router.add_get("/dashboard", index)
    app.router.add_get("/dashboard/{name}", asset)


async def _to_dashboard(_: web.Request) -> web.Response:
    raise web.HTTPFound("/dashboard")


def token_middleware(token: str | None, open_paths: frozenset[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Refuses (401) requests for data without the bearer token, when there is one."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is not None and request.path not in open_paths and not request.path.startswith("/dashboard/"):
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                return web.json_response({"error": "this stats port needs `Authorization: Bearer <stats_token>`"},
                                         status=401, headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return check


def check_exposure(host: str, token: str | None, what: str = "stats port") -> None:
    if not is_loopback(host) and not token:
        raise ConfigError(f"the {what} would listen on {host}, reachable from other machines: set `stats_token` "
                          "(requests for data then need `Authorization: Bearer <token>`)")


class StatsServer:
    def __init__(self, role: str, name: str, registry: CollectorRegistry, jsonstats: JsonStats,
                 token: str | None = None) -> None:
        self.role = role
        self.name = name
        self.registry = registry
        self.token = token or None
        self._jsonstats = jsonstats
        self._started = time.time()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        check_exposure(host, self.token)
        app = web.Application(middlewares=[token_middleware(self.token, frozenset({"/healthz", "/", "/dashboard"}))])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/jsonstats", self._json)
        app.router.add_get("/metrics", self._metrics)
        add_dashboard_routes(app)
        self._runner, self.port = await listen(app, host, port)
        return self.port

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "role": self.role, "name": self.name})

    async def _json(self, _: web.Request) -> web.Response:
        body = {"role": self.role, "name": self.name, "uptime_s": round(time.time() - self._started, 3),
                "now": round(time.time(), 3), **self._jsonstats()}
        return web.Response(body=msgspec.json.encode(body), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
