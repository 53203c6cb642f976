"""A network in one event loop (proxy, workers, client over real RA-TLS sockets on 127.0.0.1), for tests
that need workers misbehaving on cue, which separate processes cannot be told to do precisely."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from cocoon.client.node import ClientNode
from cocoon.config import ClientConfig, ProxyConfig, WorkerConfig
from cocoon.inference.fake import FakeEngine
from cocoon.inference.local import GenRequest, Tally
from cocoon.proxy.server import ProxyServer
from cocoon.worker.runner import WorkerNode

MODEL = "fake-model"


class ScriptedEngine(FakeEngine):
    """The fake engine, misbehaving on cue: after `after` tokens (0: before the first) it awaits `then()`
    if given, and then hangs until cancelled."""

    def __init__(self, *, after: int, then: Callable[[], Awaitable[None]] | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.after = after
        self.then = then
        self.hung = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def generate(self, req: GenRequest, usage: Tally) -> AsyncIterator[str]:
        produced = 0
        async with contextlib.aclosing(super().generate(req, usage)) as pieces:
            async for piece in pieces:
                if produced == self.after:
                    await self._misbehave()
                yield piece
                produced += 1

    async def _misbehave(self) -> None:
        if self.then is not None:
            await self.then()
        self.hung.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.cancelled.set()


@dataclass
class Net:
    proxies: list[ProxyServer] = field(default_factory=list)
    workers: list[WorkerNode] = field(default_factory=list)
    clients: list[ClientNode] = field(default_factory=list)
    _runs: dict[int, tuple[asyncio.Event, asyncio.Task[None]]] = field(default_factory=dict)
    session: aiohttp.ClientSession | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.clients[0].api_port}/v1"

    async def proxy(self, state: Path, **overrides: Any) -> ProxyServer:
        cfg = ProxyConfig(name=f"proxy-{len(self.proxies) + 1}", state_dir=str(state), port=0, stats_port=0,
                          policy="dev", image="cocoon-proxy-dev", **overrides)
        proxy = ProxyServer(cfg)
        await proxy.start()
        self.proxies.append(proxy)
        return proxy

    async def worker(self, proxy: ProxyServer, engine: FakeEngine, *, name: str | None = None,
                     **overrides: Any) -> WorkerNode:
        name = name or f"worker-{len(self.workers) + 1}"
        cfg = WorkerConfig(name=name, state_dir=str(Path(proxy.cfg.state_dir) / name), proxy=f"127.0.0.1:{proxy.port}",
                           engine="fake", stats_port=0, policy="dev", image="cocoon-worker-dev", **overrides)
        node = WorkerNode(cfg, engine=engine)
        stop = asyncio.Event()
        self._runs[id(node)] = (stop, asyncio.create_task(node.run(stop)))
        self.workers.append(node)
        await until(lambda: any(w.name == name for w in proxy.registry.workers()))
        return node

    async def stop_worker(self, node: WorkerNode) -> None:
        stop, task = self._runs.pop(id(node))
        stop.set()
        await task

    async def client(self, proxies: list[ProxyServer], **overrides: Any) -> ClientNode:
        addresses = [f"127.0.0.1:{p.port}" for p in proxies]
        cfg = ClientConfig(name=f"client-{len(self.clients) + 1}", state_dir=str(proxies[0].cfg.state_dir),
                           proxy=addresses[0], proxies=addresses[1:], api_port=0, stats_port=0, policy="dev",
                           **overrides)
        node = ClientNode(cfg)
        await node.start()
        self.clients.append(node)
        await until(lambda: node.dialer.connected)
        return node

    async def post(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> Answer:
        assert self.session is not None
        async with self.session.post(self.api + "/chat/completions", json=body, headers=headers) as resp:
            return Answer(resp.status, dict(resp.headers), await resp.read())


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    raw: bytes

    def json(self) -> Any:
        return json.loads(self.raw)

    def events(self) -> list[Any]:
        """A streamed answer's SSE payloads, decoded, without the final [DONE]."""
        lines = [ln[len(b"data: "):] for ln in self.raw.split(b"\n\n") if ln.startswith(b"data: ")]
        return [json.loads(ln) for ln in lines if ln != b"[DONE]"]

    def content_chunks(self) -> int:
        return sum(1 for e in self.events() for c in e.get("choices", []) if c.get("delta", {}).get("content"))

    @property
    def done(self) -> bool:
        return self.raw.rstrip().endswith(b"data: [DONE]")


def chat(stream: bool = True, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "tell me something"}],
                            "stream": stream, **fields}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def network() -> AsyncIterator[Net]:
    net = Net()
    net.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        yield net
    finally:
        await net.session.close()
        for client in net.clients:
            await client.stop()
        for node in list(net.workers):
            if id(node) in net._runs:
                await net.stop_worker(node)
        for proxy in net.proxies:
            if proxy._server is not None and proxy._server.is_serving():
                await proxy.stop()
