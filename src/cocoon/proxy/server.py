"""The proxy process: RA-TLS listener for workers and clients, routing, relaying, metering."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cocoon import errors
from cocoon.config import ProxyConfig
from cocoon.ledger.local import LocalLedger
from cocoon.observe.stats import StatsServer
from cocoon.proxy.billing import Books
from cocoon.proxy.registry import WorkerLink, WorkerRegistry
from cocoon.ratls import tls
from cocoon.runtime import make_node_identity
from cocoon.wire.connection import Call, Connection, ProtocolError, accept_hello
from cocoon.wire.messages import (
    Cancel,
    ModelsQuery,
    ModelsReply,
    Request,
    ResponseChunk,
    ResponseEnd,
    ResponseError,
    ResponseHead,
)

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ClientLink:
    conn: Connection
    key: str
    inflight: dict[int, tuple[Call | None, asyncio.Task[None]]] = field(default_factory=dict)


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("cocoon_proxy_requests", "Client requests by outcome", ["outcome"], registry=r)
        self.tokens = Counter("cocoon_proxy_tokens", "Tokens metered", ["kind"], registry=r)
        self.active = Gauge("cocoon_proxy_active_requests", "Requests in flight", registry=r)
        self.workers = Gauge("cocoon_proxy_workers", "Connected workers", registry=r)
        self.clients = Gauge("cocoon_proxy_clients", "Connected clients", registry=r)
        self.first_byte = Histogram("cocoon_proxy_first_byte_seconds", "Time to the answer's first byte",
                                    registry=r)
        self.charged = Counter("cocoon_proxy_charged_nanoton", "Charged to clients", registry=r)


class ProxyServer:
    def __init__(self, cfg: ProxyConfig) -> None:
        self.cfg = cfg
        self.registry = WorkerRegistry()
        self.clients: set[ClientLink] = set()
        self.metrics = ProxyMetrics()
        state = Path(cfg.state_dir)
        self.ledger = LocalLedger(state / "ledger.sqlite", default_prices=cfg.prices)
        self.books = Books(state / "proxy-books.sqlite", self.ledger)
        self.identity, self.verifier = make_node_identity("proxy", cfg, {"worker", "client"})
        self.stats = StatsServer("proxy", cfg.name, self.metrics.registry, self.jsonstats)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._outcomes: dict[str, int] = {}

    async def start(self) -> None:
        self._server = await tls.serve(self._on_peer, self.cfg.host, self.cfg.port, self.identity, self.verifier)
        self.port = self._server.sockets[0].getsockname()[1]
        await self.stats.start(self.cfg.stats_host, self.cfg.stats_port)
        log.info("proxy listening", extra={"fields": {"port": self.port, "stats_port": self.stats.port}})

    async def stop(self) -> None:
        if self._server:
            self._server.close()
        for link in [*self.registry.workers(), *self.clients]:
            await link.conn.close("proxy shutting down")
        await self.stats.stop()
        self.books.close()
        self.ledger.close()

    # -- links -----------------------------------------------------------------------------------------------
    async def _on_peer(self, stream: tls.TlsStream) -> None:
        try:
            conn, hello = await accept_hello(stream, name=self.cfg.name, allowed_roles={"worker", "client"})
        except (ProtocolError, ConnectionError, TimeoutError) as exc:
            log.warning("refused peer at hello", extra={"fields": {"peer": stream.peername, "reason": str(exc)}})
            return
        key = stream.peer.public_key.hex()
        if hello.role == "worker":
            if hello.worker is None or not hello.worker.models or hello.worker.max_active_requests < 1:
                log.warning("worker hello without usable params", extra={"fields": {"worker": hello.name}})
                return
            link = WorkerLink(conn=conn, params=hello.worker, key=key, name=hello.name)
            self.registry.add(link)
            self.metrics.workers.set(len(self.registry.workers()))
            log.info("worker connected", extra={"fields": {"worker": hello.name, "key": key[:16],
                                                           "models": hello.worker.models,
                                                           "image_hash": _hex(stream.peer.image_hash)}})
            try:
                reason = await conn.run(self._on_worker_message)
            finally:
                self.registry.remove(link)
                self.metrics.workers.set(len(self.registry.workers()))
            log.info("worker disconnected", extra={"fields": {"worker": hello.name, "reason": reason}})
        else:
            client = ClientLink(conn=conn, key=key)
            self.clients.add(client)
            self.metrics.clients.set(len(self.clients))
            log.info("client connected", extra={"fields": {"client": key[:16]}})
            try:
                reason = await conn.run(lambda c, m: self._on_client_message(client, m))
            finally:
                self.clients.discard(client)
                self.metrics.clients.set(len(self.clients))
                for call, task in client.inflight.values():
                    if call is not None:
                        call.cancel("client disconnected")
                    task.cancel()
            log.info("client disconnected", extra={"fields": {"client": key[:16], "reason": reason}})

    def _on_worker_message(self, conn: Connection, msg: Request | Cancel | ModelsQuery) -> None:
        # Workers only answer; a worker that sends requests is ignored rather than trusted.
        log.warning("ignoring %s from a worker", type(msg).__name__)

    def _on_client_message(self, client: ClientLink, msg: Request | Cancel | ModelsQuery) -> None:
        if isinstance(msg, Request):
            task = client.conn.spawn(self._serve_request(client, msg))
            client.inflight[msg.id] = (None, task)
        elif isinstance(msg, Cancel):
            entry = client.inflight.pop(msg.id, None)
            if entry is not None:
                call, task = entry
                if call is not None:
                    call.cancel(msg.reason or "cancelled by the client")
                task.cancel()
        else:
            client.conn.send_nowait(ModelsReply(id=msg.id, models=self.registry.models()))

    # -- one request -----------------------------------------------------------------------------------------
    async def _serve_request(self, client: ClientLink, req: Request) -> None:
        started = time.monotonic()
        client_id = req.id
        outcome = "error"
        self.metrics.active.inc()
        worker: WorkerLink | None = None
        try:
            worker = self._pick(req)
            worker.active += 1
            timeout = min(self.cfg.first_byte_timeout_s, max(req.deadline - time.time(), 0.001))
            call = await worker.conn.request(req)
            client.inflight[client_id] = (call, client.inflight[client_id][1])
            try:
                outcome = await self._relay(client, client_id, call, worker, req, started, timeout)
            finally:
                call.cancel("proxy stopped relaying")
        except errors.ApiError as exc:
            outcome = exc.code or "error"
            await _send_error(client.conn, client_id, exc)
        except asyncio.CancelledError:
            outcome = "cancelled"
        except ConnectionError as exc:
            await _send_error(client.conn, client_id, errors.upstream_failed(f"worker link failed: {exc}"))
        finally:
            if worker is not None:
                worker.active -= 1
            client.inflight.pop(client_id, None)
            self.metrics.active.dec()
            self.metrics.requests.labels(outcome).inc()
            self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1

    def _pick(self, req: Request) -> WorkerLink:
        if not self.registry.knows(req.model):
            raise errors.model_not_found(req.model)
        worker = self.registry.select_worker(req.model, req.max_coefficient)
        if worker is None:
            raise errors.no_worker(req.model)
        return worker

    async def _relay(self, client: ClientLink, client_id: int, call: Call, worker: WorkerLink, req: Request,
                     started: float, first_byte_timeout: float) -> str:
        out = client.conn
        msg = await _first_answer(call, first_byte_timeout, worker.name)
        self.metrics.first_byte.observe(time.monotonic() - started)
        while True:
            if isinstance(msg, ResponseChunk):
                msg.id = client_id
                await out.send(msg)
            elif isinstance(msg, ResponseHead):
                msg.id = client_id
                msg.proxy_ms = (time.monotonic() - started) * 1000
                await out.send(msg)
            elif isinstance(msg, ResponseEnd):
                charge = self.books.settle(f"{client.key}:{req.uid or client_id}", client.key, worker.key,
                                           req.model, msg.usage, worker.params.coefficient)
                self._meter(msg, charge.client_cost)
                worker.served += 1
                msg.id = client_id
                msg.proxy_ms = (time.monotonic() - started) * 1000
                msg.cost_nanoton = charge.client_cost
                await out.send(msg)
                return "ok"
            elif isinstance(msg, ResponseError):
                if msg.code == "link_lost":
                    worker.failed += 1
                msg.id = client_id
                await out.send(msg)
                return msg.code or "error"
            msg = await call.next()

    def _meter(self, end: ResponseEnd, cost: int) -> None:
        u = end.usage
        for kind, n in (("prompt", u.prompt_tokens), ("cached", u.cached_tokens),
                        ("completion", u.completion_tokens), ("reasoning", u.reasoning_tokens)):
            if n:
                self.metrics.tokens.labels(kind).inc(n)
        self.metrics.charged.inc(cost)

    def jsonstats(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "workers": [
                {"name": w.name, "key": w.key[:16], "models": w.params.models, "active": w.active,
                 "max_active": w.params.max_active_requests, "coefficient": w.params.coefficient,
                 "region": w.params.region, "served": w.served, "failed": w.failed,
                 "rtt_ms": w.conn.rtt_ms}
                for w in self.registry.workers()
            ],
            "clients": len(self.clients),
            "models": [m.id for m in self.registry.models()],
            "requests": dict(self._outcomes),
            "active_requests": sum(w.active for w in self.registry.workers()),
            "books": self.books.summary(),
            "prices": msgspec.to_builtins(self.ledger.root_params().prices),
        }


async def _first_answer(call: Call, timeout: float, worker_name: str) -> Any:
    try:
        return await call.next(timeout)
    except TimeoutError:
        raise errors.ApiError(504, f"worker {worker_name} sent no answer within {timeout:.1f}s",
                              type="timeout_error", code="first_byte_timeout") from None


async def _send_error(conn: Connection, request_id: int, exc: errors.ApiError) -> None:
    try:
        await conn.send(ResponseError(id=request_id, status=exc.status, message=exc.message, type=exc.type,
                                      code=exc.code, retry_after=exc.retry_after))
    except ConnectionError:
        pass


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value else None


async def run_proxy(cfg: ProxyConfig, stop: asyncio.Event) -> None:
    server = ProxyServer(cfg)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()
