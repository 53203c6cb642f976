"""The worker process: starts its engine, dials its proxy (reconnecting with backoff), runs requests."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from cocoon.attest.registry import registered_proxy_check
from cocoon.config import WorkerConfig
from cocoon.core.ids import request_scope
from cocoon.core.usage import KINDS, Usage
from cocoon.inference.base import Engine
from cocoon.inference.factory import make_engine
from cocoon.observe.series import Series
from cocoon.observe.stats import StatsServer
from cocoon.runtime import identity_stats, make_node_identity, own_image_hash, registry_head_path
from cocoon.wire.connection import Connection, hello
from cocoon.wire.dialer import Dialer
from cocoon.wire.messages import Cancel, Hello, Inbound, Payout, Request, WorkerParams
from cocoon.worker.execution import Execution
from cocoon.worker.payments import WorkerPayments

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
        self.identity, self.verifier = make_node_identity("worker", cfg, {"proxy"})
        self.image_hash = own_image_hash(cfg)
        self.stats = StatsServer("worker", cfg.name, self.metrics.registry, self.jsonstats, token=cfg.stats_token)
        self.series = Series()  # requests ended and tokens generated, for the dashboards
        self.running: dict[int, asyncio.Task[None]] = {}
        self.payments = WorkerPayments(cfg) if cfg.payments else None
        self.models: list[str] = []
        # paid through the proxy's contract: only the proxy registered at the address dialed may take the link
        registered = registered_proxy_check(self.payments.ledger, registry_head_path(cfg)) if self.payments else None
        self.dialer = Dialer(lambda: [cfg.proxy], self.identity, self.verifier, self._hello, self._on_inbound,
                             check_peer=registered)
        self.dialer.on_change = lambda up: self.metrics.connected.set(1 if up else 0)
        self._served = 0
        self._usage_totals = dict.fromkeys(KINDS, 0)

    async def run(self, stop: asyncio.Event) -> None:
        await self.stats.start(self.cfg.stats_host, self.cfg.stats_port)
        started = time.monotonic()
        await self.engine.start()
        self.models = await self.engine.models()
        log.info("engine ready", extra={"fields": {"engine": self.engine.name, "models": self.models,
                                                   "load_s": round(time.monotonic() - started, 3)}})
        redeeming = None
        if self.payments is not None:
            await asyncio.to_thread(self.payments.open)
            redeeming = asyncio.create_task(self.payments.run())
        self.dialer.start()
        try:
            await stop.wait()
        finally:
            await self.dialer.stop("worker shutting down")
            if redeeming is not None:
                redeeming.cancel()
            if self.payments is not None:
                self.payments.close()
            for task in list(self.running.values()):
                task.cancel()
            await self.engine.close()
            await self.stats.stop()

    def _hello(self) -> Hello:
        owner = self.payments.wallet.address if self.payments else self.cfg.owner
        params = WorkerParams(models=self.models, coefficient=self.cfg.coefficient,
                              max_active_requests=self.cfg.max_active_requests, region=self.cfg.region,
                              owner=owner, supports_tools=self.engine.supports_tools)
        return hello("worker", self.cfg.name, worker=params)

    def _on_inbound(self, conn: Connection, msg: Inbound) -> None:
        if isinstance(msg, Payout):
            if self.payments is not None:
                self.payments.accept(msg)
        elif isinstance(msg, Request):
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
        execution = Execution(self.engine, req, conn.send)
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
            self.metrics.active.dec()
            self.metrics.requests.labels(outcome).inc()
            self.series.sample("latency_ms", (time.monotonic() - started) * 1000)
            usage = execution.usage or Usage()
            log.info("request done", extra={"fields": {
                "outcome": outcome, "model": req.model, "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens, "ms": round((time.monotonic() - started) * 1000, 1)}})
            if execution.usage is not None:
                self._count(execution)

    def _count(self, execution: Execution) -> None:
        u = execution.usage
        assert u is not None
        self._served += 1
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
            "proxy": self.cfg.proxy,
            "proxy_connected": self.dialer.connected,
            "last_link_error": self.dialer.last_error,
            "active_requests": len(self.running),
            "max_active_requests": self.cfg.max_active_requests,
            "served": self._served,
            "tokens": dict(self._usage_totals),
            "image_hash": self.image_hash,
            **({"wallet": self.payments.wallet.address, "earned_nanoton": self.payments.earned_nanoton,
                "redeemed_nanoton": self.payments.redeemed_nanoton,
                "refused_vouchers": self.payments.refused_vouchers} if self.payments else {}),
        }


async def run_worker(cfg: WorkerConfig, stop: asyncio.Event) -> None:
    await WorkerNode(cfg).run(stop)
