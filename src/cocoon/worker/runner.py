"""The worker process: starts its engine, dials its proxy (reconnecting with backoff), runs requests."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from cocoon.attest.registry import registered_proxy_check
from cocoon.attest.types import AttestationError, PeerIdentity
from cocoon.config import WorkerConfig
from cocoon.core.ids import request_scope
from cocoon.core.usage import KINDS, Usage
from cocoon.discovery import proxy_directory
from cocoon.fsutil import private_dir, write_atomically
from cocoon.inference.base import Engine
from cocoon.inference.factory import make_engine
from cocoon.ledger.base import LedgerError
from cocoon.media.formats import capabilities
from cocoon.observe.series import Series
from cocoon.observe.stats import StatsServer
from cocoon.ratls.cert import signer
from cocoon.runtime import identity_stats, make_node_identity, own_image_hash, registry_head_path
from cocoon.wire.connection import Connection, hello
from cocoon.wire.dialer import Dialer
from cocoon.wire.messages import (
    MEDIA_ENDPOINT,
    Cancel,
    ChunkAck,
    Hello,
    Inbound,
    Payout,
    Request,
    RequestPart,
    WorkerParams,
)
from cocoon.worker.execution import Execution
from cocoon.worker.media import MediaExecution
from cocoon.worker.notary import Notary
from cocoon.worker.payments import WorkerPayments
from cocoon.worker.sealing import Unsealer

log = logging.getLogger(__name__)

class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("cocoon_worker_requests", "Requests by outcome", ["outcome"],
                                registry=self.registry)
        self.tokens = Counter("cocoon_worker_tokens", "Tokens generated or read", ["kind"], registry=self.registry)
        self.active = Gauge("cocoon_worker_active_requests", "Requests running on the engine",
                            registry=self.registry)
        self.connected = Gauge("cocoon_worker_proxy_connected", "1 while the proxy link is up",
                               registry=self.registry)


class WorkerNode:
    def __init__(self, cfg: WorkerConfig, engine: Engine | None = None) -> None:
        self.cfg = cfg
        self.engine = engine or make_engine(cfg.engine, **cfg.engine_options)
        self.metrics = WorkerMetrics()
        # the weights' hash, in the claims (before the engine loads: hashed once per file, cached in the state dir)
        weights = self.engine.weights(cfg.state_path / "weights-sha256.json")
        model_hash = bytes.fromhex(weights.sha256) if weights else b""
        declared = bool(weights and weights.declared)
        self.identity, self.verifier = make_node_identity("worker", cfg, {"proxy"}, model_hash=model_hash,
                                                          model_hash_declared=declared)
        self.image_hash = own_image_hash(cfg)
        # requests sealed to the HPKE key in this worker's claims (made at start, never stored) open here only
        hpke_key = self.identity.hpke_key
        self.unsealer = Unsealer(hpke_key) if hpke_key is not None else None
        self.stats = StatsServer("worker", cfg.name, self.metrics.registry, self.jsonstats, token=cfg.stats_token)
        self.series = Series()  # requests ended and tokens generated, for the dashboards
        self.running: dict[int, asyncio.Task[None]] = {}
        # by link and call_id, while their input arrives and their output leaves
        self.media_jobs: dict[tuple[Connection, int], MediaExecution] = {}
        self.payments = WorkerPayments(cfg) if cfg.payments else None
        self.models: list[str] = []
        # paid through the proxy's contract: only the proxy registered at the address dialed may take the link
        self._registered = registered_proxy_check(self.payments.ledger, registry_head_path(cfg)) \
            if self.payments else None
        # the proxies to serve: pinned in the config, or found in the root registry (nearest first); one link to
        # each of up to `max_proxies` of them
        self.directory = proxy_directory(cfg, self.payments.ledger if self.payments else None)
        self.dialers: list[Dialer] = []
        self._checking = threading.Lock()
        for i in range(cfg.max_proxies):
            dialer = Dialer(functools.partial(self._addresses_for, i), self.identity, self.verifier, self._hello,
                            functools.partial(self._on_inbound, i),
                            check_peer=self._check_proxy if self.payments else None)
            dialer.on_change = self._link_changed
            self.dialers.append(dialer)
        # every answer's receipt is signed with the RA-TLS key its certificate attests (the same after reissues)
        payments = self.payments
        prices = (lambda: payments.ledger.root_params().prices) if payments is not None else None
        self.notary = Notary(signer(self.identity.private_key), self.identity.public_key, cfg.coefficient,
                             image_hash=bytes.fromhex(self.image_hash) if self.image_hash else b"",
                             model_hash=model_hash, model_hash_declared=declared, prices=prices)
        self._served = 0
        self._usage_totals = dict.fromkeys(KINDS, 0)
        self._media_ms = 0
        self._media_jobs = 0

    @property
    def dialer(self) -> Dialer:
        """The first link (the only one of a worker serving one proxy)."""
        return self.dialers[0]

    async def run(self, stop: asyncio.Event) -> None:
        # public: the key, quote and claims that anyone checking this worker's receipts needs (`cocoon receipt
        # verify --cert`); later certificates are reissued for the same key and claims
        cert_file = private_dir(self.cfg.state_path) / f"{self.cfg.name}.cert.pem"
        write_atomically(cert_file, self.identity.current().cert_pem, 0o644)
        await self.stats.start(self.cfg.stats_host, self.cfg.stats_port)
        started = time.monotonic()
        await self.engine.start()
        self.models = await self.engine.models() if "llm" in self.cfg.workloads else []
        log.info("engine ready", extra={"fields": {"engine": self.engine.name, "models": self.models,
                                                   "load_s": round(time.monotonic() - started, 3)}})
        redeeming = None
        await self.directory.refresh(probe=True)
        if self.payments is not None:
            redeeming = asyncio.create_task(self.payments.run())
        self.directory.start()
        for dialer in self.dialers:
            dialer.start()
        try:
            await stop.wait()
        finally:
            for dialer in self.dialers:
                await dialer.stop("worker shutting down")
            await self.directory.stop()
            if redeeming is not None:
                redeeming.cancel()
            if self.payments is not None:
                self.payments.close()
            for task in list(self.running.values()):
                task.cancel()
            await self.engine.close()
            await self.stats.stop()

    def _addresses_for(self, i: int) -> list[str]:
        """Where link `i` may go: the proxies no other link of this worker is linked to, dialing or retrying, so
        that its links serve distinct proxies (a link whose proxy went away keeps trying it, or a new one)."""
        taken = {d.address for j, d in enumerate(self.dialers) if j != i and d.address}
        return [a for a in self.directory.addresses() if a not in taken]

    def _link_changed(self, up: bool) -> None:
        self.metrics.connected.set(sum(d.connected for d in self.dialers))
        if not up:
            self.directory.on_link_lost()

    def _check_proxy(self, address: str, peer: PeerIdentity) -> None:
        """Paid through the proxy's contract: only the proxy registered at the address dialed may take the link
        (blocking: runs in the dialer's thread), and its channel is found before the hello."""
        assert self.payments is not None and self._registered is not None
        with self._checking:  # one link's check at a time: they share the registry's head file and the purses
            self._registered(address, peer)
            try:
                self.payments.open(address)
            except LedgerError as exc:
                raise AttestationError(f"no payment channel with the proxy at {address}: {exc}") from None

    def _hello(self) -> Hello:
        owner = self.payments.wallet.address if self.payments else self.cfg.owner
        params = WorkerParams(models=self.models, coefficient=self.cfg.coefficient,
                              max_active_requests=self.cfg.max_active_requests, region=self.cfg.region,
                              owner=owner, supports_tools=self.engine.supports_tools,
                              media=capabilities(self.cfg.media) if "media" in self.cfg.workloads else None)
        return hello("worker", self.cfg.name, worker=params)

    def _on_inbound(self, link: int, conn: Connection, msg: Inbound) -> None:
        if isinstance(msg, Payout):
            if self.payments is not None:
                self.payments.accept(self.dialers[link].address, msg)
        elif isinstance(msg, RequestPart | ChunkAck):
            job = self.media_jobs.get((conn, msg.call_id))
            if job is None:
                return  # for a job that ended
            if isinstance(msg, ChunkAck):
                job.chunks_taken(msg.taken)
            elif not job.feed(msg):
                log.warning("the proxy sent body parts beyond its credit: job cancelled")
                task = self.running.get(msg.call_id)
                if task is not None:
                    task.cancel("body parts beyond credit")
        elif isinstance(msg, Request):
            if msg.endpoint == MEDIA_ENDPOINT and "media" in self.cfg.workloads:
                # now, not in its task: its parts may be in the very bytes that brought it
                self.media_jobs[conn, msg.call_id] = MediaExecution(msg, conn.send, self.cfg.media,
                                                                    self.cfg.state_path / "media", self.notary,
                                                                    self.unsealer)
            task = conn.spawn(self._execute(conn, msg))
            self.running[msg.call_id] = task
        elif isinstance(msg, Cancel):
            task = self.running.get(msg.call_id)
            if task is not None:
                task.cancel(msg.reason or "cancelled by the proxy")

    async def _execute(self, conn: Connection, req: Request) -> None:
        with request_scope(req.request_id):
            await self._run(conn, req)

    async def _run(self, conn: Connection, req: Request) -> None:
        execution: Execution | MediaExecution = self.media_jobs.get((conn, req.call_id)) or Execution(
            self.engine, req, conn.send, self.notary, self.unsealer)
        started = time.monotonic()
        self.metrics.active.inc()
        outcome = "error"
        try:
            await execution.run()
            outcome = "ok"
        except asyncio.CancelledError as exc:
            outcome = "cancelled"
            log.info("request cancelled", extra={"fields": {"reason": str(exc.args[0]) if exc.args else ""}})
        except ConnectionError:
            outcome = "link_lost"
        finally:
            self.running.pop(req.call_id, None)
            self.media_jobs.pop((conn, req.call_id), None)
            self.metrics.active.dec()
            self.metrics.requests.labels(outcome).inc()
            self.series.sample("latency_ms", (time.monotonic() - started) * 1000)
            usage = execution.usage or Usage()
            log.info("request done", extra={"fields": {
                "outcome": outcome, "model": req.model, "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens, "media_ms": usage.media_ms,
                "ms": round((time.monotonic() - started) * 1000, 1)}})
            if execution.usage is not None:
                self._count(execution)

    def _count(self, execution: Execution | MediaExecution) -> None:
        u = execution.usage
        assert u is not None
        self._served += 1
        if u.media_ms:
            self._media_ms += u.media_ms
            self._media_jobs += 1
        self.series.count("requests")
        self.series.count("completion_tokens", u.completion_tokens)
        for kind, n in u.by_kind():
            self._usage_totals[kind] += n
            if n:
                self.metrics.tokens.labels(kind).inc(n)

    def jsonstats(self) -> dict[str, Any]:
        return {
            "engine": self.engine.name,
            "models": self.models,
            "model_hash": self.engine.model_hash,
            "identity": identity_stats(self.identity, self.image_hash),
            "series": self.series.snapshot(),
            "proxy": next((d.address for d in self.dialers if d.connected), self.dialers[0].address),
            "proxy_connected": any(d.connected for d in self.dialers),
            "proxies": [{"address": d.address, "connected": d.connected} for d in self.dialers],
            "proxy_latency_ms": self.directory.latency_ms(),
            "last_link_error": next((d.last_error for d in self.dialers if d.last_error), None),
            "active_requests": len(self.running),
            "max_active_requests": self.cfg.max_active_requests,
            "served": self._served,
            "tokens": dict(self._usage_totals),
            "workloads": list(self.cfg.workloads),
            "media": {"jobs": self._media_jobs, "seconds": self._media_ms / 1000},
            "image_hash": self.image_hash,
            **({"wallet": self.payments.wallet.address, "earned_nanoton": self.payments.earned_nanoton,
                "redeemed_nanoton": self.payments.redeemed_nanoton,
                "refused_vouchers": self.payments.refused_vouchers} if self.payments else {}),
        }


async def run_worker(cfg: WorkerConfig, stop: asyncio.Event) -> None:
    await WorkerNode(cfg).run(stop)
