"""The proxy process: RA-TLS listener for workers and clients, routing, relaying, metering."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec

from cocoon.config import ProxyConfig
from cocoon.core.errors import ApiError, ErrorCode
from cocoon.observe.stats import StatsServer
from cocoon.proxy.backlog import Backlog
from cocoon.proxy.billing import Billing, open_ledger
from cocoon.proxy.forwarding import ClientLink, Forwarder
from cocoon.proxy.gateway import ENDPOINTS as GATEWAY_ENDPOINTS
from cocoon.proxy.gateway import Gateway
from cocoon.proxy.limits import ClientLimiter
from cocoon.proxy.metrics import ProxyMetrics
from cocoon.proxy.registry import WorkerLink, WorkerRegistry
from cocoon.proxy.reputation import ReputationBook, ReputationSummary
from cocoon.proxy.rerun import SpotChecker
from cocoon.proxy.selection import Selector
from cocoon.proxy.uploads import Upload
from cocoon.ratls import tls
from cocoon.ratls.admission import Admission
from cocoon.runtime import identity_stats, make_node_identity, serve_until
from cocoon.seal import key_id
from cocoon.wire.connection import Connection, ProtocolError, accept_hello
from cocoon.wire.messages import (
    Cancel,
    ChunkAck,
    Hello,
    Inbound,
    ModelsQuery,
    ModelsReply,
    Request,
    RequestPart,
    ResponseError,
)
from cocoon.wire.parts import WINDOW

log = logging.getLogger(__name__)


class ProxyServer:
    def __init__(self, cfg: ProxyConfig) -> None:
        self.cfg = cfg
        self.registry = WorkerRegistry()
        self.reputations = ReputationBook(keep_s=cfg.reputation_keep_s)
        self._reputation_file = cfg.state_path / f"{cfg.name}-reputation.json"
        self.selector: Selector[WorkerLink] = Selector(cfg.selection, self.reputations)
        self.backlog = Backlog(self.selector, cfg.queue_depth)
        self.limiter = ClientLimiter(cfg.client_max_concurrent, cfg.client_tokens_per_minute)
        self.clients: set[ClientLink] = set()
        self.metrics = ProxyMetrics()
        self.metrics.waiting.set_function(lambda: len(self.backlog))
        self.metrics.watch_reputation(self.reputations)
        self.ledger = open_ledger(cfg)
        self.billing = Billing(cfg, self.ledger)
        self.spot_checks = SpotChecker(cfg.spot_checks, self.registry, self.selector, self.backlog, self.billing,
                                       metrics=self.metrics)
        self.forwarder = Forwarder(cfg, self.registry, self.selector, self.backlog, self.billing, self.limiter,
                                   self.metrics, self.spot_checks)
        self.identity, self.verifier = make_node_identity("proxy", cfg, {"worker", "client"},
                                                          voucher_key=self.billing.key.public_key)
        self.gateway = Gateway(cfg, self.forwarder, self.identity, self.models_reply)
        self.admission = Admission(cfg.admission)
        self.stats = StatsServer("proxy", cfg.name, self.metrics.registry, self.jsonstats, token=cfg.stats_token)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._settling: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # The books are checked against the chain before anything is served: a rolled-back database refuses.
        await self.billing.start(self.cfg.endpoint or f"{self.cfg.host}:{self.cfg.port}")
        restored = self.reputations.load(self._reputation_file, self.selector.clock())
        if restored:
            log.info("worker reputations restored", extra={"fields": {"workers": restored}})
        self._server = await tls.serve(self._on_peer, self.cfg.host, self.cfg.port, self.identity, self.verifier,
                                       admission=self.admission)
        self.port = self._server.sockets[0].getsockname()[1]
        self._settling = asyncio.create_task(self.billing.run())
        if self._limits_keyed_by() == "tls_key":
            log.warning("payments are off: per-client limits count per RA-TLS key, which a client mints freely",
                        extra={"fields": {"client_max_concurrent": self.cfg.client_max_concurrent,
                                          "client_tokens_per_minute": self.cfg.client_tokens_per_minute}})
        await self.stats.start(self.cfg.stats_host, self.cfg.stats_port)
        log.info("proxy listening", extra={"fields": {"port": self.port, "stats_port": self.stats.port}})

    async def stop(self) -> None:
        if self._server:
            self._server.close()
        relays = [task for client in self.clients for task in client.inflight.values()]
        for link in [*self.registry.workers(), *self.clients]:
            await link.conn.close("proxy shutting down")
        for task in relays:
            task.cancel()
        await self.spot_checks.stop()
        # a relay cut short still settles what it delivered: let it finish before the books close
        await asyncio.gather(*relays, return_exceptions=True)
        if self._settling is not None:
            self._settling.cancel()
        await self.stats.stop()
        await self.billing.stop()
        self.reputations.save(self._reputation_file)
        self.ledger.close()

    # -- links -----------------------------------------------------------------------------------------------
    async def _on_peer(self, stream: tls.TlsStream) -> None:
        def admit(hello: Hello) -> None:
            self._check_worker_params(hello)
            # known only now: the models a worker serves, which the registry may allow its remote engine for
            if hello.role == "worker" and hello.worker is not None:
                self.verifier.check_engine_models(stream.peer, hello.worker.models)

        try:
            conn, hello = await accept_hello(stream, name=self.cfg.name, allowed_roles={"worker", "client"},
                                             timeout=self.cfg.admission.handshake_timeout_s,
                                             admit=admit)
        except (ProtocolError, ConnectionError, TimeoutError) as exc:
            log.warning("refused peer at hello", extra={"fields": {"peer": stream.peername,
                                                                   "key": stream.peer.public_key.hex()[:16],
                                                                   "reason": str(exc)}})
            return
        key = stream.peer.public_key.hex()
        if hello.role == "worker":
            assert hello.worker is not None  # admit() lets no worker in without its params
            models = hello.worker.models
            conn.peer_check = lambda peer: self.verifier.check_engine_models(peer, models)
            hpke_key = stream.peer.hpke_public_key
            link = WorkerLink(conn=conn, params=hello.worker, key=key, name=hello.name,
                              seal_key_id=key_id(hpke_key) if hpke_key else b"")
            await self.billing.open_worker(key, hello.worker.owner)
            self.registry.add(link)
            self.selector.add(link)
            self.backlog.serve_waiting()
            self.metrics.workers.set(len(self.registry))
            log.info("worker connected", extra={"fields": {"worker": hello.name, "key": key[:16],
                                                           "models": hello.worker.models,
                                                           "image_hash": _hex(stream.peer.image_hash),
                                                           "config_hash": _hex(stream.peer.config_hash),
                                                           "policy": stream.peer.policy_name,
                                                           "engine_origin": stream.peer.engine_origin or None}})
            try:
                reason = await conn.run(self._on_worker_message)
            finally:
                self.registry.remove(link)
                self.selector.remove(link)
                self.metrics.workers.set(len(self.registry))
            log.info("worker disconnected", extra={"fields": {"worker": hello.name, "reason": reason}})
        else:
            client = ClientLink(conn=conn, key=key,
                                account=await self.billing.open_account(stream.peer.public_key, hello.client))
            self.clients.add(client)
            self.metrics.clients.set(len(self.clients))
            log.info("client connected", extra={"fields": {"client": key[:16]}})
            try:
                reason = await conn.run(lambda c, m: self._on_client_message(client, m))
            finally:
                self.clients.discard(client)
                self.billing.close_account(client.account)
                self.metrics.clients.set(len(self.clients))
                for task in list(client.inflight.values()):
                    task.cancel()  # its relay then cancels the call on the worker
            log.info("client disconnected", extra={"fields": {"client": key[:16], "reason": reason}})

    def _check_worker_params(self, hello: Hello) -> None:
        """Raise ProtocolError (the worker is told why; the log says it too) unless a worker's hello announces
        usable params. Its price coefficient must lie in 1..the root registry's max_coefficient: a worker
        announcing more would be a price no client agreed to, and one at or below zero no price at all."""
        if hello.role != "worker":
            return
        params = hello.worker
        if params is None or not params.served or params.max_active_requests < 1:
            raise ProtocolError("a worker's hello must name its models or workloads and at least one concurrent "
                                "request")
        ceiling = self.ledger.refresh().prices.max_coefficient
        if not 0 < params.coefficient <= ceiling:
            raise ProtocolError(f"price coefficient {params.coefficient} is outside 1..{ceiling} (per-mille of the "
                                f"list price; the root registry's max_coefficient)")

    def _on_worker_message(self, conn: Connection, msg: Inbound) -> None:
        # Workers only answer; a worker that sends requests is ignored rather than trusted.
        log.warning("ignoring %s from a worker", type(msg).__name__)

    def _on_client_message(self, client: ClientLink, msg: Inbound) -> None:
        if isinstance(msg, RequestPart | ChunkAck):
            self._on_upload(client, msg)
        elif isinstance(msg, Request):
            if msg.parts:
                client.uploads[msg.call_id] = Upload()
            client.inflight[msg.call_id] = client.conn.spawn(self._serve(client, msg))
        elif isinstance(msg, Cancel):
            task = client.inflight.pop(msg.call_id, None)
            if task is not None:
                task.cancel(msg.reason or "cancelled by the client")
        elif isinstance(msg, ModelsQuery):
            client.conn.send_nowait(self.models_reply(msg))

    def models_reply(self, query: ModelsQuery) -> ModelsReply:
        """The answer to a models query, on a link or through the gateway; with `seal_for`, the certificates of
        some workers serving that model (cocoon/seal: the client verifies them and seals to them)."""
        certificates = self.registry.certificates(query.seal_for, self.cfg.seal_candidates) if query.seal_for else []
        return ModelsReply(call_id=query.call_id, models=self.registry.models(self.selector.active),
                           certificates=certificates, media=self.registry.media(),
                           media_workers=self.registry.media_workers())

    def _on_upload(self, client: ClientLink, msg: RequestPart | ChunkAck) -> None:
        """A part of a `parts` request's body, or the client's pace for its answer (proxy/uploads.py). Frames for a
        request that ended are dropped; a client sending parts beyond its credit loses that request."""
        upload = client.uploads.get(msg.call_id)
        if upload is None:
            return
        if isinstance(msg, ChunkAck):
            upload.chunks_taken(msg.taken)
        elif not upload.feed(msg):
            log.warning("a client sent body parts beyond its credit: request refused")
            task = client.inflight.pop(msg.call_id, None)
            client.uploads.pop(msg.call_id, None)
            upload.close()
            if task is not None:
                task.cancel("body parts beyond credit")
            refused = ApiError(400, f"body parts were sent beyond the credit the proxy gave ({WINDOW} parts ahead of "
                                    f"its acknowledgements): request refused", code=ErrorCode.INVALID_REQUEST)
            client.conn.send_nowait(ResponseError.from_api(refused, msg.call_id))

    async def _serve(self, client: ClientLink, req: Request) -> None:
        started = time.monotonic()
        try:
            if req.endpoint in GATEWAY_ENDPOINTS:  # a relay's encapsulated request (Oblivious HTTP)
                await self.gateway.serve(client, req)
            else:
                await self.forwarder.serve(client, req)
        finally:
            self.metrics.request_took(time.monotonic() - started)

    def jsonstats(self) -> dict[str, Any]:
        now = time.monotonic()
        workers = self.registry.workers()
        reputation = self.reputations.summaries(now)
        standing = {r.key: r for r in reputation}
        books = self.billing.summary()
        series = self.metrics.series
        return {
            "port": self.port,
            "identity": identity_stats(self.identity),
            "workers": [
                {"name": w.name, "key": w.key[:16], "models": w.params.models,
                 "max_active": w.params.max_active_requests, "coefficient": w.params.coefficient,
                 "region": w.params.region, "rtt_ms": w.conn.rtt_ms, **self.selector.describe(w),
                 **_peer_stats(w, standing.get(w.key)),
                 "earned_nanoton": books["workers"].get(w.key, {}).get("earned_nanoton", 0)}
                for w in workers
            ],
            "reputation": [msgspec.to_builtins(s) for s in reputation],
            "clients": len(self.clients),
            "models": [m.id for m in self.registry.models(self.selector.active)],
            "media_workers": self.registry.media_workers(),
            "requests": dict(self.forwarder.outcomes),
            "ohttp": self.gateway.stats(),
            # re-executions of deterministic requests on other workers: verdicts, and their cost to the proxy
            "spot_checks": self.spot_checks.stats(),
            "receipts": dict(self.forwarder.receipts),
            "media_seconds": self.forwarder.media_ms / 1000,  # input media processed and charged
            "active_requests": sum(self.selector.active(w) for w in workers),
            "waiting_requests": len(self.backlog),
            "limits": {"client_max_concurrent": self.cfg.client_max_concurrent,
                       "client_tokens_per_minute": self.cfg.client_tokens_per_minute,
                       "keyed_by": self._limits_keyed_by()},
            # connections before authentication: in progress, and refused or dropped per reason
            "admission": self.admission.stats(),
            "books": books,
            "settlement": {"commit_interval_s": self.cfg.commit_interval_s,
                           "next_commit_at": self.billing.next_commit_at,
                           "claimed_nanoton": sum(c["claimed_nanoton"] for c in books["clients"].values()),
                           # from each request's settlement to its claim being final on chain
                           "settle_to_final_s": self.billing.settlement.claim_times.summary()
                           if self.billing.settlement else None},
            # the dashboards' recent history (2 s buckets) and the last minute's latency, both in ms
            "series": series.snapshot(),
            "latency_ms": series.recent("latency_ms"),
            "ttft_ms": series.recent("ttft_ms"),
            "proxy_contract": self.billing.settlement.proxy if self.billing.settlement else None,
            "prices": msgspec.to_builtins(self.ledger.root_params().prices),
            # TDX collateral: platforms cached, recently failed, being fetched (each bounded)
            "collateral": self.verifier.collateral.stats() if self.verifier.collateral else None,
        }

    def _limits_keyed_by(self) -> str:
        """What per-client limits count against (billing.Account.limits_key): paying wallets, or link keys."""
        return "wallet" if self.billing.settlement is not None else "tls_key"


def _peer_stats(link: WorkerLink, standing: ReputationSummary | None) -> dict[str, Any]:
    """What the proxy knows of a connected worker's attestation (as last verified) and standing."""
    peer = link.conn.stream.peer
    return {"attestation": peer.kind, "image_hash": _hex(peer.image_hash), "cert_expires_at": round(peer.not_after),
            "success": standing.success if standing else None, "ttft_ms": standing.ttft_ms if standing else None,
            "tokens_per_s": standing.tokens_per_s if standing else None,
            "answered": standing.answered if standing else 0, "failed": standing.failed if standing else 0}


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value else None


async def run_proxy(cfg: ProxyConfig, stop: asyncio.Event) -> None:
    await serve_until(ProxyServer(cfg), stop)
