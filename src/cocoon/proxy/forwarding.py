"""One client request through the proxy: admission, a worker, relaying, retrying, and settling the books.

Until the first token reaches the client, a failing worker (lost link, stall, server error) is invisible:
the request moves to another worker, within its attempts and its deadline. Once tokens have reached the
client, a failure ends the stream with an error event, and the client is charged for the completion tokens
it received, as the worker counted them per relayed chunk (`ResponseChunk.tokens`): a worker that died
cannot report usage any more, and the proxy never parses answers. The prompt of a broken answer is not
charged. A non-streamed answer reaches the client only whole, so it is held here until its end and can
always be retried. Each request settles at most once (the books are idempotent by request uid).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from cocoon.config import ProxyConfig
from cocoon.core.errors import ApiError, ErrorCode, model_not_found, upstream_failed
from cocoon.core.usage import Usage
from cocoon.ledger.books import Settled
from cocoon.ledger.pricing import Charge
from cocoon.proxy.backlog import Backlog, Want
from cocoon.proxy.billing import Account, Billing
from cocoon.proxy.limits import ClientLimiter
from cocoon.proxy.metrics import ProxyMetrics
from cocoon.proxy.registry import WorkerLink, WorkerRegistry
from cocoon.proxy.selection import Selector
from cocoon.proxy.watchdog import Watchdog
from cocoon.wire.connection import Call, Connection
from cocoon.wire.messages import Payout, Request, ResponseChunk, ResponseEnd, ResponseError, ResponseHead

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ClientLink:
    conn: Connection
    key: str
    account: Account
    inflight: dict[int, asyncio.Task[None]] = field(default_factory=dict)


class _Retry(Exception):
    """The worker failed before anything reached the client: try another one."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def _worker_fault(msg: ResponseError) -> bool:
    """Errors that say something about the worker rather than the request (4xx) or its deadline."""
    return msg.code != ErrorCode.REQUEST_TIMEOUT and (
        msg.status >= 500 or msg.code in (ErrorCode.LINK_LOST, ErrorCode.FIRST_TOKEN_TIMEOUT))


class Forwarder:
    def __init__(self, cfg: ProxyConfig, registry: WorkerRegistry, selector: Selector[WorkerLink],
                 backlog: Backlog[WorkerLink], billing: Billing, limiter: ClientLimiter,
                 metrics: ProxyMetrics) -> None:
        self.cfg = cfg
        self.registry = registry
        self.selector = selector
        self.backlog = backlog
        self.billing = billing
        self.limiter = limiter
        self.metrics = metrics
        self.outcomes: dict[str, int] = {}

    async def serve(self, client: ClientLink, req: Request) -> None:
        client_id = req.id  # `req.id` is rewritten to each worker call's id
        outcome = "error"
        self.metrics.active.inc()
        admitted = False
        books_id = _books_id(client, client_id, req)
        try:
            self.limiter.admit(client.key)
            admitted = True
            if not self.registry.knows(req.model):
                raise model_not_found(req.model)
            self.billing.reserve(books_id, client.account, req, req.max_coefficient or
                                 self.registry.max_coefficient(req.model))
            outcome = await self._route(client, client_id, req)
        except ApiError as exc:
            outcome = exc.code or "error"
            await _send_error(client.conn, client_id, exc)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except ConnectionError:
            outcome = "client_link_lost"
        finally:
            self.billing.release(books_id)
            if admitted:
                self.limiter.release(client.key)
            client.inflight.pop(client_id, None)
            self.metrics.active.dec()
            self.metrics.requests.labels(outcome).inc()
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    async def _route(self, client: ClientLink, client_id: int, req: Request) -> str:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + min(max(req.deadline - time.time(), 0.0), self.cfg.total_timeout_s)
        want = Want(req.model, req.region, req.max_coefficient, tuple(req.features))
        tried: list[WorkerLink] = []
        failure: ApiError | None = None
        while len(tried) < self.cfg.max_attempts and loop.time() < deadline:
            wait_s = min(self.cfg.queue_timeout_s, deadline - loop.time())
            worker = await self.backlog.acquire(want, tuple(tried), wait_s)
            try:
                return await self._attempt(client, client_id, req, worker, started, deadline)
            except _Retry as retry:
                failure = retry.error
                tried.append(worker)
                self.metrics.retries.labels(failure.code or "error").inc()
                log.info("moving a request to another worker", extra={"fields": {
                    "worker": worker.name, "reason": failure.message, "attempt": len(tried)}})
            finally:
                self.backlog.release(worker)
        if failure is None or loop.time() >= deadline:
            raise ApiError(504, f"the request reached its deadline after {loop.time() - started:.1f}s "
                                f"({len(tried)} worker(s) tried)", type="timeout_error", code=ErrorCode.REQUEST_TIMEOUT)
        raise ApiError(failure.status, f"{failure.message} (gave up after {len(tried)} workers)",
                       type=failure.type, code=failure.code, param=failure.param,
                       retry_after=failure.retry_after or 1)

    async def _attempt(self, client: ClientLink, client_id: int, req: Request, worker: WorkerLink, started: float,
                       deadline: float) -> str:
        try:
            call = await worker.conn.request(req)
        except ConnectionError as exc:
            self.selector.record_failure(worker)
            raise _Retry(upstream_failed(f"worker {worker.name} link failed: {exc}")) from None
        watchdog = Watchdog(call, worker.name, idle_s=self.cfg.idle_timeout_s, deadline=deadline,
                            first_token_s=self.cfg.first_token_timeout_s if req.stream else None)
        try:
            if req.stream:
                return await self._relay_stream(client, client_id, req, worker, call, watchdog, started)
            return await self._relay_whole(client, client_id, req, worker, call, started)
        finally:
            watchdog.stop()
            call.cancel("proxy stopped relaying")

    def _before_first_token(self, worker: WorkerLink, msg: ResponseError) -> ApiError:
        """An error while nothing reached the client: raises _Retry, or returns the error the client gets."""
        fault = _worker_fault(msg)
        if fault:
            self.selector.record_failure(worker)
        error = msg.to_api()
        if msg.code == ErrorCode.LINK_LOST:
            error = upstream_failed(f"worker {worker.name} disconnected before answering ({msg.message})")
        if fault or msg.status == 429:  # 429: this worker is overloaded, another one may not be
            raise _Retry(error)
        return error  # the request's own fault (4xx) or its deadline: no other worker would do better

    async def _relay_whole(self, client: ClientLink, client_id: int, req: Request, worker: WorkerLink, call: Call,
                           started: float) -> str:
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        held: list[ResponseHead | ResponseChunk] = []
        while True:
            msg = await call.next()
            if isinstance(msg, ResponseHead | ResponseChunk):
                held.append(msg)
            elif isinstance(msg, ResponseEnd):
                now = loop.time()
                self.metrics.first_byte.observe(now - started)
                settled = self._settle(client, client_id, req, worker, msg.usage)
                for part in held:
                    part.id = client_id
                    if isinstance(part, ResponseHead):
                        part.proxy_ms = (now - started) * 1000
                    await client.conn.send(part)
                msg.id, msg.proxy_ms = client_id, (now - started) * 1000
                msg.cost_nanoton, msg.voucher = settled.charge.client_cost, settled.client_voucher
                await client.conn.send(msg)
                self.selector.record_whole(worker, (now - sent_at) * 1000, msg.usage.completion_tokens)
                return "ok"
            elif isinstance(msg, ResponseError):
                raise self._before_first_token(worker, msg)

    async def _relay_stream(self, client: ClientLink, client_id: int, req: Request, worker: WorkerLink, call: Call,
                            watchdog: Watchdog, started: float) -> str:
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        out = client.conn
        msg = await call.next()
        if isinstance(msg, ResponseError):
            raise self._before_first_token(worker, msg)
        if not isinstance(msg, ResponseHead):
            self.selector.record_failure(worker)
            raise _Retry(upstream_failed(f"worker {worker.name} sent {type(msg).__name__} before its head"))
        head_at = loop.time()
        watchdog.answer_started()
        self.metrics.first_byte.observe(head_at - started)
        msg.id, msg.proxy_ms = client_id, (head_at - started) * 1000
        await out.send(msg)
        delivered = 0  # completion tokens the client has received
        settled = False
        try:
            while True:
                msg = await call.next()
                watchdog.touch()
                if isinstance(msg, ResponseChunk):
                    msg.id = client_id
                    await out.send(msg)
                    delivered += msg.tokens
                elif isinstance(msg, ResponseEnd):
                    settled = True
                    done = self._settle(client, client_id, req, worker, msg.usage)
                    now = loop.time()
                    msg.id, msg.proxy_ms = client_id, (now - started) * 1000
                    msg.cost_nanoton, msg.voucher = done.charge.client_cost, done.client_voucher
                    await out.send(msg)
                    self.selector.record_stream(worker, (head_at - sent_at) * 1000, (now - head_at) * 1000,
                                                msg.usage.completion_tokens)
                    return "ok"
                elif isinstance(msg, ResponseError):
                    settled = True
                    broken = self._broken_stream(client, client_id, req, worker, msg, delivered)
                    await out.send(broken)
                    return broken.code or "error"
        finally:
            if not settled and delivered:  # the client hung up or its link broke: it pays for what it got
                self._settle(client, client_id, req, worker, Usage(completion_tokens=delivered))

    def _broken_stream(self, client: ClientLink, client_id: int, req: Request, worker: WorkerLink,
                       msg: ResponseError, delivered: int) -> ResponseError:
        if _worker_fault(msg) or msg.code == ErrorCode.IDLE_TIMEOUT:
            self.selector.record_failure(worker)
        usage = Usage(completion_tokens=delivered)
        settled = (self._settle(client, client_id, req, worker, usage) if delivered
                   else Settled(Charge(0, 0), None, None))
        if msg.code == ErrorCode.LINK_LOST:
            reason, code = f"worker {worker.name} disconnected ({msg.message})", ErrorCode.WORKER_FAILED
        else:
            reason, code = msg.message, msg.code
        log.info("stream broke after its first token", extra={"fields": {
            "worker": worker.name, "code": code, "delivered_tokens": delivered}})
        return ResponseError(id=client_id, status=msg.status, type=msg.type, code=code, param=msg.param, usage=usage,
                             cost_nanoton=settled.charge.client_cost, voucher=settled.client_voucher,
                             message=f"the answer broke off after {delivered} tokens: {reason}; "
                                     f"only the delivered tokens are charged")

    def _settle(self, client: ClientLink, client_id: int, req: Request, worker: WorkerLink, usage: Usage
                ) -> Settled:
        settled = self.billing.settle(_books_id(client, client_id, req), client.account, worker.key, req.model,
                                      usage, worker.params.coefficient)
        if settled.worker_voucher is not None and not settled.duplicate and worker.conn.version >= 2:
            worker.conn.send_nowait(Payout(id=req.id, fee_nanoton=settled.charge.worker_fee,
                                           voucher=settled.worker_voucher))
        charge = settled.charge
        self.limiter.charge(client.key, usage.total_tokens)
        for kind, n in usage.by_kind():
            if n:
                self.metrics.tokens.labels(kind).inc(n)
        self.metrics.charged.inc(charge.client_cost)
        return settled


def _books_id(client: ClientLink, client_id: int, req: Request) -> str:
    """The books' idempotency key: the client's own request uid (a retry of it is never charged twice)."""
    return f"{client.key}:{req.uid or client_id}"


async def _send_error(conn: Connection, request_id: int, exc: ApiError) -> None:
    try:
        await conn.send(ResponseError.from_api(exc, request_id))
    except ConnectionError:
        pass
