"""The network view: one page joining the stats of several processes (`cocoon up` serves it for its network).

The browser talks to this server only: it fetches each process's /jsonstats itself and answers the page's
/jsonstats with all of them, so the page never leaves its own origin.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from cocoon.observe.stats import add_dashboard_routes, check_exposure, listen, token_middleware

FETCH_TIMEOUT_S = 3.0  # under load a member answers late; a late answer beats a blank row
CACHE_S = 0.5  # several open pages share one round of fetches


@dataclass(frozen=True)
class Member:
    role: str
    name: str
    stats_url: str  # http://HOST:PORT of its stats server
    token: str | None = None  # its stats_token, when it has one


class NetworkDashboard:
    def __init__(self, members: list[Member], token: str | None = None) -> None:
        self.members = members
        self.token = token or None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._cached: tuple[float, bytes] | None = None
        self._lock = asyncio.Lock()
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        check_exposure(host, self.token, "network dashboard")
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S))
        app = web.Application(middlewares=[token_middleware(self.token, frozenset({"/", "/dashboard"}))])
        app.router.add_get("/jsonstats", self._joined)
        add_dashboard_routes(app)
        self._runner, self.port = await listen(app, host, port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _joined(self, _: web.Request) -> web.Response:
        async with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > CACHE_S:
                processes = await asyncio.gather(*(self._fetch(m) for m in self.members))
                body = {"network": True, "now": round(time.time(), 3), "processes": processes}
                self._cached = (time.monotonic(), msgspec.json.encode(body))
        return web.Response(body=self._cached[1], content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def _fetch(self, member: Member) -> dict[str, Any]:
        entry: dict[str, Any] = {"role": member.role, "name": member.name}
        assert self._session is not None
        headers = {"Authorization": f"Bearer {member.token}"} if member.token else {}
        try:
            async with self._session.get(f"{member.stats_url}/jsonstats", headers=headers) as resp:
                if resp.status != 200:
                    entry["error"] = f"HTTP {resp.status}"
                else:
                    entry["stats"] = msgspec.json.decode(await resp.read())
        except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError) as exc:
            entry["error"] = type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}"[:200]
        return entry
