"""One client request through the proxy: admission, a worker, relaying, retrying, and settling the books.

Before any work, billing admits the request: its `request_id` is taken for its paying party (one answer per id:
an id in flight or answered before is refused), and its maximum cost reserved at its price cap (the client's,
within the registry's maximum), the dearest coefficient it may be routed to.

Until the first token reaches the client, a failing worker (lost link, stall, server error) is invisible:
the request moves to another worker, within its attempts and its deadline: it is still the same request,
charged once. Once tokens have reached the client, a failure (or the client hanging up) ends the stream, and
the client is charged for the completion tokens it received, as the worker counted them per relayed chunk
(`ResponseChunk.tokens`), and for the prompt the worker counted before its first token (`ResponseHead.usage`):
the engine did all of the prefill. A worker that died cannot report usage any more, and the proxy never parses
answers. A non-streamed answer reaches the client only whole, so it is held here until its end and can always
be retried. Every report is held to the request's bounds when it is charged (proxy/billing.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import msgspec

from cocoon.config import ProxyConfig
from cocoon.core.errors import ApiError, ErrorCode, model_not_found, upstream_failed
from cocoon.core.ids import request_scope
from cocoon.core.usage import Usage
from cocoon.ledger.books import Settled
from cocoon.ledger.pricing import Charge
from cocoon.proxy.backlog import Backlog, Want
from cocoon.proxy.billing import Account, Billing, Reservation
from cocoon.proxy.limits import ClientLimiter
from cocoon.proxy.metrics import ProxyMetrics
from cocoon.proxy.registry import WorkerLink, WorkerRegistry
from cocoon.proxy.selection import Selector
from cocoon.proxy.watchdog import Watchdog
from cocoon.wire.connection import Call, Connection, LinkLost
from cocoon.wire.messages import Answer, Payout, Request, ResponseChunk, ResponseEnd, ResponseError, ResponseHead

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ClientLink:
    conn: Connection
    key: str
    account: Account
    inflight: dict[int, asyncio.Task[None]] = field(default_factory=dict)  # by the client's call_id


class _Retry(Exception):
    """The worker failed before anything reached the client: try another one."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def _worker_fault(msg: ResponseError) -> bool:
    """Errors that say something about the worker rather than the request (4xx) or its deadline."""
    return msg.code != ErrorCode.REQUEST_TIMEOUT and (msg.status >= 500 or msg.code == ErrorCode.FIRST_TOKEN_TIMEOUT)


@dataclass(frozen=True)
class _Job:
    """One request as the proxy serves it: what the client asked (with the output cap the proxy reserved), what
    it was admitted with, and where its answer goes."""

    client: ClientLink
    req: Request  # `call_id` is the client's; `max_tokens` the cap reserved for it
    res: Reservation


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
        """Answer `req`, the client's call `req.call_id`; every line logged meanwhile carries its request_id."""
        with request_scope(req.request_id):
            await self._serve(client, req)

    async def _serve(self, client: ClientLink, req: Request) -> None:
        started = time.monotonic()
        outcome = "error"
        self.metrics.active.inc()
        admitted = False
        res: Reservation | None = None
        try:
            self.limiter.admit(client.key)
            admitted = True
            if not self.registry.knows(req.model):
                raise model_not_found(req.model)
            res = self.billing.admit(req, client.account, self._price_cap(req))
            cap = res.max_tokens
            job = _Job(client, req if cap == req.max_tokens else msgspec.structs.replace(req, max_tokens=cap), res)
            outcome = await self._route(job)
        except ApiError as exc:
            outcome = ErrorCode.label(exc.code)
            await _send_error(client.conn, req.call_id, exc)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except ConnectionError:
            outcome = "client_link_lost"
        finally:
            if res is not None:
                self.billing.end(res)
            if admitted:
                self.limiter.release(client.key)
            client.inflight.pop(req.call_id, None)
            self.metrics.active.dec()
            self.metrics.requests.labels(outcome).inc()
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            log.info("request done", extra={"fields": {
                "outcome": outcome, "model": req.model, "ms": round((time.monotonic() - started) * 1000, 1)}})

    def _price_cap(self, req: Request) -> int:
        """The dearest worker coefficient this request may be served at: the client's cap, never above the root
        registry's max_coefficient (which is the cap when the client sets none).

        The request's money is reserved at this cap, not at the coefficient of some worker connected now: every
        worker it can be routed to (a retry may move it to another) charges at most that, so the charge stays
        within the reservation, and a dear worker linked to the proxy never makes a request fail that cheaper ones
        could serve (it used to: a worker announcing 10**12 raised every uncapped reservation out of reach)."""
        ceiling = self.billing.ledger.root_params().prices.max_coefficient
        if req.max_coefficient is None:
            return ceiling
        if req.max_coefficient <= 0:
            raise ApiError(400, f"max_coefficient must be positive, not {req.max_coefficient}",
                           code=ErrorCode.INVALID_VALUE, param="max_coefficient")
        return min(req.max_coefficient, ceiling)

    async def _route(self, job: _Job) -> str:
        req = job.req
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + min(max(req.deadline - time.time(), 0.0), self.cfg.total_timeout_s)
        # never a worker dearer than the coefficient reserved for: its charge could exceed the reservation
        want = Want(req.model, req.region, job.res.coefficient, tuple(req.features))
        tried: list[WorkerLink] = []
        failure: ApiError | None = None
        while len(tried) < self.cfg.max_attempts and loop.time() < deadline:
            wait_s = min(self.cfg.queue_timeout_s, deadline - loop.time())
            worker = await self.backlog.acquire(want, tuple(tried), wait_s)
            try:
                return await self._attempt(job, worker, started, deadline)
            except _Retry as retry:
                failure = retry.error
                tried.append(worker)
                self.metrics.retries.labels(ErrorCode.label(failure.code)).inc()
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

    async def _attempt(self, job: _Job, worker: WorkerLink, started: float, deadline: float) -> str:
        try:
            call = await worker.conn.request(job.req)
        except ConnectionError as exc:
            self.selector.record_failure(worker)
            raise _Retry(upstream_failed(f"worker {worker.name} link failed: {exc}")) from None
        watchdog = Watchdog(call, worker.name, idle_s=self.cfg.idle_timeout_s, deadline=deadline,
                            first_token_s=self.cfg.first_token_timeout_s if job.req.stream else None)
        try:
            if job.req.stream:
                return await self._relay_stream(job, worker, call, watchdog, started)
            return await self._relay_whole(job, worker, call, started)
        finally:
            watchdog.stop()
            call.cancel("proxy stopped relaying")

    async def _before_first_token(self, worker: WorkerLink, call: Call) -> Answer:
        """The worker's next answer while nothing reached the client; raises _Retry when another worker may do
        better (it failed, or it is overloaded), the ApiError the client gets when none would (the request's own
        fault, or its deadline)."""
        try:
            msg = await call.next()
        except LinkLost as lost:
            self.selector.record_failure(worker)
            raise _Retry(upstream_failed(f"worker {worker.name} disconnected before answering ({lost})")) from None
        if not isinstance(msg, ResponseError):
            return msg
        fault = _worker_fault(msg)
        if fault:
            self.selector.record_failure(worker)
        if fault or msg.status == 429:  # 429: this worker is overloaded, another one may not be
            raise _Retry(msg.to_api())
        raise msg.to_api()

    async def _relay_whole(self, job: _Job, worker: WorkerLink, call: Call, started: float) -> str:
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        held: list[ResponseHead | ResponseChunk] = []
        call_id = job.req.call_id
        while True:
            msg = await self._before_first_token(worker, call)
            if isinstance(msg, ResponseHead | ResponseChunk):
                held.append(msg)
            elif isinstance(msg, ResponseEnd):
                now = loop.time()
                proxy_ms = (now - started) * 1000
                self.metrics.first_byte.observe(now - started)
                settled = self._settle(job, worker, call, msg.usage)
                for part in held:
                    if isinstance(part, ResponseHead):
                        await job.client.conn.send(msgspec.structs.replace(part, call_id=call_id, proxy_ms=proxy_ms))
                    else:
                        await job.client.conn.send(msgspec.structs.replace(part, call_id=call_id))
                await job.client.conn.send(msgspec.structs.replace(
                    msg, call_id=call_id, proxy_ms=proxy_ms, usage=settled.usage,
                    cost_nanoton=settled.charge.client_cost, voucher=settled.client_voucher))
                if not settled.beyond:  # an answer charged at its bounds is no success of its worker
                    self.selector.record_whole(worker, (now - sent_at) * 1000, settled.usage.completion_tokens)
                return "ok"

    async def _relay_stream(self, job: _Job, worker: WorkerLink, call: Call, watchdog: Watchdog,
                            started: float) -> str:
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        out = job.client.conn
        call_id = job.req.call_id
        msg = await self._before_first_token(worker, call)
        if not isinstance(msg, ResponseHead):
            self.selector.record_failure(worker)
            raise _Retry(upstream_failed(f"worker {worker.name} sent {type(msg).__name__} before its head"))
        head_at = loop.time()
        prompt = msg.usage or Usage()  # what the engine counted before its first token
        watchdog.answer_started()
        self.metrics.first_byte.observe(head_at - started)
        await out.send(msgspec.structs.replace(msg, call_id=call_id, proxy_ms=(head_at - started) * 1000))
        delivered = 0  # completion tokens the client has received
        settled = False
        try:
            while True:
                try:
                    msg = await call.next()
                except LinkLost as lost:
                    self.selector.record_failure(worker)
                    settled = True
                    broken = self._broken_stream(job, worker, call, ApiError(
                        502, f"worker {worker.name} disconnected ({lost})", type="api_error",
                        code=ErrorCode.WORKER_FAILED), _delivered(prompt, delivered))
                    await out.send(broken)
                    return broken.code or "error"
                watchdog.touch()
                if isinstance(msg, ResponseChunk):
                    await out.send(msgspec.structs.replace(msg, call_id=call_id))
                    delivered += msg.tokens
                elif isinstance(msg, ResponseEnd):
                    settled = True
                    done = self._settle(job, worker, call, msg.usage)
                    now = loop.time()
                    await out.send(msgspec.structs.replace(
                        msg, call_id=call_id, proxy_ms=(now - started) * 1000, usage=done.usage,
                        cost_nanoton=done.charge.client_cost, voucher=done.client_voucher))
                    if not done.beyond:
                        self.selector.record_stream(worker, (head_at - sent_at) * 1000, (now - head_at) * 1000,
                                                    done.usage.completion_tokens)
                    return "ok"
                elif isinstance(msg, ResponseError):
                    if _worker_fault(msg) or msg.code == ErrorCode.IDLE_TIMEOUT:
                        self.selector.record_failure(worker)
                    settled = True
                    broken = self._broken_stream(job, worker, call, msg.to_api(), _delivered(prompt, delivered))
                    await out.send(broken)
                    return ErrorCode.label(broken.code)  # the worker chose it: a bounded label
        finally:
            if not settled and delivered:  # the client hung up or its link broke: it pays for what it got
                self._settle(job, worker, call, _delivered(prompt, delivered))

    def _broken_stream(self, job: _Job, worker: WorkerLink, call: Call, error: ApiError,
                       usage: Usage) -> ResponseError:
        """The client's last frame of a stream that broke after its first token: charged its prompt and what was
        delivered."""
        delivered = usage.completion_tokens
        settled = (self._settle(job, worker, call, usage) if delivered
                   else Settled(Charge(0, 0), None, None))
        log.info("stream broke after its first token", extra={"fields": {
            "worker": worker.name, "code": error.code, "delivered_tokens": delivered}})
        told = ApiError(error.status, f"the answer broke off after {delivered} tokens: {error.message}; "
                                      f"only its prompt and the delivered tokens are charged",
                        type=error.type, code=error.code, param=error.param)
        return ResponseError.from_api(told, job.req.call_id, usage=settled.usage if delivered else None,
                                      cost_nanoton=settled.charge.client_cost, voucher=settled.client_voucher)

    def _settle(self, job: _Job, worker: WorkerLink, call: Call, usage: Usage) -> Settled:
        settled = self.billing.settle(job.res, worker.key, worker.name, job.req.model, usage,
                                      worker.params.coefficient)
        if settled.beyond:
            self.selector.record_misreport(worker)
            for kind in settled.beyond:
                self.metrics.beyond_bounds.labels(kind.removesuffix("_tokens")).inc()
        if settled.worker_voucher is not None and worker.conn.version >= 2:
            worker.conn.send_nowait(Payout(call_id=call.call_id, fee_nanoton=settled.charge.worker_fee,
                                           voucher=settled.worker_voucher))
        usage = settled.usage
        charge = settled.charge
        self.limiter.charge(job.client.key, usage.total_tokens)
        for kind, n in usage.by_kind():
            if n:
                self.metrics.tokens.labels(kind).inc(n)
        self.metrics.charged.inc(charge.client_cost)
        return settled


def _delivered(prompt: Usage, completion_tokens: int) -> Usage:
    """What a stream broken off after its first token is charged for: its prompt, as the worker counted it before
    that token (nothing when its engine could not tell then), and the completion tokens the client received."""
    return Usage(prompt_tokens=prompt.prompt_tokens, cached_tokens=prompt.cached_tokens,
                 completion_tokens=completion_tokens)


async def _send_error(conn: Connection, call_id: int, exc: ApiError) -> None:
    try:
        await conn.send(ResponseError.from_api(exc, call_id))
    except ConnectionError:
        pass
