"""One client request through the proxy, as one object while it is in flight (`RunningRequest`, the way the
reference network keeps a running request per request): its admission, its attempts on workers, the relay of its
answer and its settlement. `Forwarder` holds what every request shares and runs each one.

- Admission, before any work: the request is one a worker can read (proxy/validation.py), its paying party is
  within its limits (proxy/limits.py), its model is known, and billing takes its `request_id` for its paying party
  (one answer per id: an id in flight or answered before is refused) and reserves its maximum cost at its price
  cap (the client's, within the registry's maximum), the dearest coefficient it may be routed to
  (proxy/billing.py).
- Attempts: until the first token reaches the client, a failing worker (lost link, stall, server error) is
  invisible: the request moves to another worker, within its attempts and its deadline (proxy/attempts.py
  decides); it is still the same request, charged once.
- Relay: a streamed answer is passed on frame by frame. A non-streamed answer reaches the client only whole, so it
  is held here until its end and can always be retried; a worker that has not answered it within
  `whole_timeout_s` is failing, like one that sends no first token of a stream.
- Settlement: the answer is charged once, at the usage its worker reported held to the request's bounds, and the
  worker is sent its payout. Once tokens have reached the client, a failure (or the client hanging up) ends the
  stream, and the client is charged for the completion tokens it received, as the worker counted them per relayed
  chunk (`ResponseChunk.tokens`), and for the prompt the worker counted before its first token
  (`ResponseHead.usage`): the engine did all of the prefill. A worker that died cannot report usage any more, and
  the proxy never parses answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from cocoon.config import ProxyConfig
from cocoon.core.errors import ApiError, ErrorCode, model_not_found, upstream_failed
from cocoon.core.ids import request_scope
from cocoon.core.usage import Usage
from cocoon.ledger.books import Settled
from cocoon.ledger.pricing import Charge
from cocoon.ledger.receipts import Receipt, ReceiptError
from cocoon.proxy.attempts import Attempts, Verdict, deadline_after, judge
from cocoon.proxy.backlog import Backlog, Want
from cocoon.proxy.billing import Account, Billing, Reservation
from cocoon.proxy.limits import ClientLimiter
from cocoon.proxy.metrics import ProxyMetrics
from cocoon.proxy.receipts import check_receipt, countersign
from cocoon.proxy.registry import WorkerLink, WorkerRegistry
from cocoon.proxy.rerun import SpotChecker
from cocoon.proxy.selection import Selector
from cocoon.proxy.spotcheck import Sample
from cocoon.proxy.uploads import Upload
from cocoon.proxy.validation import check_request
from cocoon.proxy.watchdog import Watchdog
from cocoon.seal import AnswerDigest, peek
from cocoon.wire.connection import Call, Connection, LinkLost
from cocoon.wire.messages import (
    Answer,
    Message,
    Payout,
    Request,
    ResponseChunk,
    ResponseEnd,
    ResponseError,
    ResponseHead,
)

log = logging.getLogger(__name__)


class Outbound(Protocol):
    """Where a request's answers go: its client's link, or the gateway collecting them (proxy/gateway.py)."""

    async def send(self, msg: Message) -> None: ...

    def send_soon(self, msg: Message) -> None: ...  # queued, in order before anything sent after it

    async def drain(self) -> None: ...


@dataclass(eq=False)
class ClientLink:
    conn: Connection
    key: str  # the link's RA-TLS key (hex): names the link in logs; limits and money go by `account`
    account: Account
    inflight: dict[int, asyncio.Task[None]] = field(default_factory=dict)  # by the client's call_id
    uploads: dict[int, Upload] = field(default_factory=dict)  # `parts` requests' bodies, by the client's call_id


class Forwarder:
    """What every request in flight shares: the proxy's configuration, its workers, money, limits and metrics."""

    def __init__(self, cfg: ProxyConfig, registry: WorkerRegistry, selector: Selector[WorkerLink],
                 backlog: Backlog[WorkerLink], billing: Billing, limiter: ClientLimiter,
                 metrics: ProxyMetrics, spot_checks: SpotChecker | None = None) -> None:
        self.cfg = cfg
        self.registry = registry
        self.selector = selector
        self.backlog = backlog
        self.billing = billing
        self.limiter = limiter
        self.metrics = metrics
        self.spot_checks = spot_checks  # re-runs a share of deterministic requests elsewhere (proxy/rerun.py)
        self.outcomes: dict[str, int] = {}
        self.receipts = {"countersigned": 0, "missing": 0, "refused": 0}  # workers' receipts, by what became of them
        self.media_ms = 0  # input media processed and charged (the media workload)

    async def serve(self, client: ClientLink, req: Request, out: Outbound | None = None) -> None:
        """Answer `req`, the client's call `req.call_id`, on its link (or to `out`); every line logged meanwhile
        carries its request_id."""
        with request_scope(req.request_id):
            await RunningRequest(self, client, req, out, client.uploads.get(req.call_id)).run()

    def price_cap(self, req: Request) -> int:
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


class _Retry(Exception):
    """The worker failed before anything reached the client: try another one."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


class RunningRequest:
    """One request in flight: what the client asked and where its answer goes, what it was admitted with, and what
    it has been charged. `run` takes it through `_admit`, `_route` (its attempts), `_relay_stream` or `_relay_whole`
    and `_settle`; `_finish` gives back what admission took, whatever happened."""

    __slots__ = ("asked", "client", "fwd", "limited", "out", "req", "res", "routed", "sealed_to", "spot", "started",
                 "upload")

    def __init__(self, fwd: Forwarder, client: ClientLink, req: Request, out: Outbound | None = None,
                 upload: Upload | None = None) -> None:
        self.fwd = fwd
        self.client = client
        self.out: Outbound = out if out is not None else client.conn
        self.upload = upload  # the body's parts, for a `parts` request (proxy/uploads.py)
        self.asked = req  # as the client sent it
        self.req = req  # as it is forwarded: `max_tokens` is the cap its money was reserved for
        self.res: Reservation | None = None
        self.limited = False  # counted in its paying party's limits until `_finish`
        self.started = time.monotonic()
        self.routed = 0.0  # event-loop time when it started looking for a worker: what `proxy_ms` counts from
        self.spot: Sample | None = None  # set when its answer is to be spot-checked: the payloads relayed
        self.sealed_to: frozenset[bytes] = frozenset()  # a sealed request: the key ids of the workers that can open it

    async def run(self) -> None:
        self.fwd.metrics.active.inc()
        outcome = "error"
        try:
            res = self._admit()
            outcome = await self._route(res)
        except ApiError as exc:
            outcome = ErrorCode.label(exc.code)
            await self._refuse(exc)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except ConnectionError:
            outcome = "client_link_lost"
        finally:
            self._finish(outcome)

    # -- admission ---------------------------------------------------------------------------------------------
    def _admit(self) -> Reservation:
        fwd, req, account = self.fwd, self.asked, self.client.account
        body_bytes = check_request(req, max_body_bytes=fwd.cfg.max_body_bytes,
                                   max_tokens_limit=fwd.cfg.max_tokens_limit,
                                   max_media_ms=round(fwd.cfg.max_media_seconds * 1000))
        if req.parts and self.upload is None:  # e.g. inside an encapsulated request: nothing would carry its parts
            raise ApiError(400, "a request whose body comes in parts must come on a link that carries them",
                           code=ErrorCode.INVALID_REQUEST)
        fwd.limiter.admit(account.limits_key)
        self.limited = True
        if not fwd.registry.knows(req.model):
            raise model_not_found(req.model)
        if req.sealed:
            self.sealed_to = frozenset(peek(req.body).key_ids)
        self.res = res = fwd.billing.admit(req, account, fwd.price_cap(req), body_bytes)
        if res.max_tokens != req.max_tokens:
            self.req = msgspec.structs.replace(req, max_tokens=res.max_tokens)
        if fwd.spot_checks is not None and not req.parts:  # a body in parts cannot be run twice
            self.spot = fwd.spot_checks.sample(self.req, res.bounds)
        return res

    def _finish(self, outcome: str) -> None:
        fwd = self.fwd
        if self.res is not None:
            fwd.billing.end(self.res)
        if self.limited:
            fwd.limiter.release(self.client.account.limits_key)
        self.client.inflight.pop(self.asked.call_id, None)
        if self.upload is not None:
            self.client.uploads.pop(self.asked.call_id, None)
            self.upload.close()
        fwd.metrics.active.dec()
        fwd.metrics.requests.labels(outcome).inc()
        fwd.outcomes[outcome] = fwd.outcomes.get(outcome, 0) + 1
        log.info("request done", extra={"fields": {
            "outcome": outcome, "model": self.asked.model,
            "ms": round((time.monotonic() - self.started) * 1000, 1)}})

    async def _refuse(self, exc: ApiError) -> None:
        try:
            await self.out.send(ResponseError.from_api(exc, self.asked.call_id))
        except ConnectionError:
            pass

    # -- attempts ----------------------------------------------------------------------------------------------
    async def _route(self, res: Reservation) -> str:
        fwd, req, cfg = self.fwd, self.req, self.fwd.cfg
        loop = asyncio.get_running_loop()
        self.routed = now = loop.time()
        attempts: Attempts[WorkerLink] = Attempts(
            now, deadline_after(now, req.deadline - time.time(), cfg.total_timeout_s), cfg.max_attempts)
        # never a worker dearer than the coefficient reserved for: its charge could exceed the reservation
        want = Want(req.model, req.region, res.coefficient, tuple(req.features))
        while attempts.more(loop.time()):
            only = self._candidates(attempts, loop.time())
            worker = await fwd.backlog.acquire(want, tuple(attempts.tried),
                                               attempts.wait_s(loop.time(), cfg.queue_timeout_s), only)
            try:
                return await self._attempt(worker, attempts.deadline)
            except _Retry as retry:
                attempts.failed(worker, retry.error)
                upload, resent = self.upload, False
                if upload is not None and upload.moved:  # its body went to that worker
                    if not self.req.resend_parts:
                        raise retry.error from None  # and its client cannot send it again
                    upload.restart()
                    resent = True
                fwd.metrics.retries.labels(ErrorCode.label(retry.error.code)).inc()
                # the code, not the message: a worker chooses its words, and a log keeps only what we can bound
                log.info("moving a request to another worker", extra={"fields": {
                    "worker": worker.name, "code": ErrorCode.label(retry.error.code),
                    "attempt": len(attempts.tried), **({"body_sent_again": True} if resent else {})}})
            finally:
                fwd.backlog.release(worker)
        raise attempts.give_up(loop.time())

    def _candidates(self, attempts: Attempts[WorkerLink], now: float) -> tuple[WorkerLink, ...] | None:
        """The only workers a sealed request may go to: those holding a key it was sealed to, found by key id (a
        few, however many workers are linked); None for a request in the clear. When none of them serving its model
        is left untried (they restarted with new keys, or left, or failed it) but others serve its model, it is
        refused with `seal_keys_stale` before any token: the client seals it again to the workers linked now
        (once), so a retry still reaches a worker that joined since. When no other worker serves it either, the
        last failure is the answer."""
        if not self.sealed_to:
            return None
        tried, model = attempts.tried, self.req.model
        holders = self.fwd.registry.holding(self.sealed_to)
        if not any(model in w.params.served and w not in tried for w in holders):
            # rare (every candidate left or failed it): looking through every worker is affordable here
            serving = [w for w in self.fwd.registry.workers() if model in w.params.served]
            if tried and all(w.seal_key_id in self.sealed_to for w in serving):
                raise attempts.give_up(now)
            raise ApiError(503, f"no worker serving `{model}` that this request was sealed to is linked to the proxy "
                                f"and untried ({len(tried)} tried); seal it again to the workers linked now",
                           type="service_unavailable", code=ErrorCode.SEAL_KEYS_STALE, retry_after=1)
        return holders

    async def _attempt(self, worker: WorkerLink, deadline: float) -> str:
        cfg = self.fwd.cfg
        if self.spot is not None:  # a check re-runs it elsewhere: never on a worker it was sent to (proxy/rerun.py)
            self.spot.tried.add(worker.key)
        try:
            call = await worker.conn.request(self.req)
        except ConnectionError as exc:
            self.fwd.selector.record_failure(worker)
            raise _Retry(upstream_failed(f"worker {worker.name} link failed: {exc}")) from None
        # a non-streamed answer's first token comes with its last: the worker has `whole_timeout_s` for all of it,
        # and so for taking a `parts` request's body and answering its first chunk (a media job's whole work)
        quick = self.req.stream and not self.req.parts
        watchdog = Watchdog(call, worker.name, idle_s=cfg.idle_timeout_s, deadline=deadline,
                            first_token_s=cfg.first_token_timeout_s if quick else cfg.whole_timeout_s)
        pump = None
        if self.upload is not None:
            pump = asyncio.create_task(self.upload.pump(worker.conn, call, self.client.conn, self.asked.call_id))
        try:
            if self.req.stream:
                return await self._relay_stream(worker, call, watchdog)
            return await self._relay_whole(worker, call)
        finally:
            watchdog.stop()
            call.cancel("proxy stopped relaying")
            if pump is not None:
                pump.cancel()

    async def _before_first_token(self, worker: WorkerLink, call: Call) -> Answer:
        """The worker's next answer while nothing reached the client; raises _Retry when another worker may do
        better (it failed, or it is full), the ApiError the client gets when none would (the request's own fault,
        or its deadline)."""
        try:
            msg = await call.next()
        except LinkLost as lost:
            self.fwd.selector.record_failure(worker)
            raise _Retry(upstream_failed(f"worker {worker.name} disconnected before answering ({lost})")) from None
        if not isinstance(msg, ResponseError):
            return msg
        verdict = judge(msg)
        if verdict is Verdict.FAULT:
            self.fwd.selector.record_failure(worker)
        if verdict is Verdict.REFUSED:
            raise msg.to_api()
        raise _Retry(msg.to_api())

    # -- relay -------------------------------------------------------------------------------------------------
    async def _relay_whole(self, worker: WorkerLink, call: Call) -> str:
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        held: list[ResponseHead | ResponseChunk] = []
        out = self.out
        call_id = self.asked.call_id
        while True:
            msg = await self._before_first_token(worker, call)
            if isinstance(msg, ResponseHead | ResponseChunk):
                held.append(msg)
            elif isinstance(msg, ResponseEnd):
                checked = None
                if self.req.sealed:  # usage must be signed over what is relayed before anything is settled
                    relayed = AnswerDigest.over((p.data for p in held if isinstance(p, ResponseChunk)), msg.sealed_end)
                    checked = self._checked(worker, msg, relayed)
                    if checked is None:  # nothing reached the client: another worker may answer it, charged once
                        raise _Retry(upstream_failed(f"worker {worker.name} answered a sealed request without a "
                                                     "receipt over the sealed answer"))
                now = loop.time()
                proxy_ms = (now - self.routed) * 1000
                self.fwd.metrics.first_byte.observe(now - self.routed)
                settled = self._settle(worker, call, msg.usage)
                receipt = self._receipt(worker, msg, settled, checked)
                for part in held:
                    if isinstance(part, ResponseHead):
                        await out.send(msgspec.structs.replace(part, call_id=call_id, proxy_ms=proxy_ms))
                    else:
                        await out.send(msgspec.structs.replace(part, call_id=call_id))
                await out.send(msgspec.structs.replace(
                    msg, call_id=call_id, proxy_ms=proxy_ms, usage=settled.usage,
                    cost_nanoton=settled.charge.client_cost, voucher=settled.client_voucher,
                    coefficient=worker.params.coefficient, receipt=receipt))
                if not settled.beyond:  # an answer charged at its bounds is no success of its worker
                    self.fwd.selector.record_whole(worker, (now - sent_at) * 1000, settled.usage.completion_tokens)
                if self.spot is not None:
                    self.spot.payloads.extend(p.data for p in held if isinstance(p, ResponseChunk))
                    self._spot_check(worker, msg)
                return "ok"

    async def _relay_stream(self, worker: WorkerLink, call: Call, watchdog: Watchdog) -> str:
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        out = self.out
        call_id = self.asked.call_id
        msg = await self._before_first_token(worker, call)
        if not isinstance(msg, ResponseHead):
            self.fwd.selector.record_failure(worker)
            raise _Retry(upstream_failed(f"worker {worker.name} sent {type(msg).__name__} before its head"))
        head_at = loop.time()
        prompt = msg.usage or Usage()  # what the engine counted before its first token
        watchdog.answer_started()
        self.fwd.metrics.first_byte.observe(head_at - self.routed)
        await out.send(msgspec.structs.replace(msg, call_id=call_id, proxy_ms=(head_at - self.routed) * 1000))
        delivered = 0  # completion tokens the client has received
        settled = False
        spot = self.spot
        sealed = AnswerDigest() if self.req.sealed else None  # the sealed answer as relayed, for its receipt
        try:
            while True:  # the hot path: one frame in, one frame out
                try:
                    msg = await call.next()
                except LinkLost as lost:
                    self.fwd.selector.record_failure(worker)
                    settled = True
                    broken = self._broken_stream(worker, call, ApiError(
                        502, f"worker {worker.name} disconnected ({lost})", type="api_error",
                        code=ErrorCode.WORKER_FAILED), _delivered(prompt, delivered))
                    await out.send(broken)
                    return ErrorCode.label(broken.code)
                watchdog.touch()
                if isinstance(msg, ResponseChunk):
                    out.send_soon(msgspec.structs.replace(msg, call_id=call_id))
                    delivered += msg.tokens
                    if spot is not None:
                        spot.payloads.append(msg.data)
                    if sealed is not None:
                        sealed.add(msg.data)
                    if not call.ready():  # chunks already here go out in one write; flow control after the last
                        await out.drain()
                elif isinstance(msg, ResponseEnd):
                    settled = True
                    checked = None
                    if sealed is not None:  # the worker's usage holds only signed over what was relayed
                        sealed.add(msg.sealed_end)
                        checked = self._checked(worker, msg, sealed.digest())
                        if checked is None:
                            broken = self._broken_stream(worker, call, ApiError(
                                502, f"worker {worker.name} ended a sealed answer without a receipt over it",
                                type="api_error", code=ErrorCode.WORKER_FAILED), _delivered(prompt, delivered))
                            await out.send(broken)
                            return ErrorCode.label(broken.code)
                    done = self._settle(worker, call, msg.usage)
                    now = loop.time()
                    await out.send(msgspec.structs.replace(
                        msg, call_id=call_id, proxy_ms=(now - self.routed) * 1000, usage=done.usage,
                        cost_nanoton=done.charge.client_cost, voucher=done.client_voucher,
                        coefficient=worker.params.coefficient, receipt=self._receipt(worker, msg, done, checked)))
                    if not done.beyond:
                        self.fwd.selector.record_stream(worker, (head_at - sent_at) * 1000, (now - head_at) * 1000,
                                                        done.usage.completion_tokens)
                    self._spot_check(worker, msg)
                    return "ok"
                elif isinstance(msg, ResponseError):
                    if judge(msg) is Verdict.FAULT:
                        self.fwd.selector.record_failure(worker)
                    settled = True
                    broken = self._broken_stream(worker, call, msg.to_api(), _delivered(prompt, delivered))
                    await out.send(broken)
                    return ErrorCode.label(broken.code)  # the worker chose it: a bounded label
        finally:
            if not settled and delivered:  # the client hung up or its link broke: it pays for what it got
                self._settle(worker, call, _delivered(prompt, delivered))

    def _broken_stream(self, worker: WorkerLink, call: Call, error: ApiError, usage: Usage) -> ResponseError:
        """The client's last frame of a stream that broke after its first token: charged its prompt and what was
        delivered."""
        delivered = usage.completion_tokens
        settled = self._settle(worker, call, usage) if delivered else Settled(Charge(0, 0), None, None)
        log.info("stream broke after its first token", extra={"fields": {
            "worker": worker.name, "code": ErrorCode.label(error.code), "delivered_tokens": delivered}})
        told = error if self.req.parts else error.with_message(
            f"the answer broke off after {delivered} tokens: {error.message}; only its prompt and the delivered "
            f"tokens are charged", retry_after=None)
        return ResponseError.from_api(told, self.asked.call_id, usage=settled.usage if delivered else None,
                                      cost_nanoton=settled.charge.client_cost, voucher=settled.client_voucher,
                                      coefficient=worker.params.coefficient)

    def _spot_check(self, worker: WorkerLink, end: ResponseEnd) -> None:
        """The answer reached its client whole: if it was sampled, have it re-run elsewhere in the background."""
        checks = self.fwd.spot_checks
        if self.spot is not None and checks is not None:
            checks.submit(self.spot, worker, end)

    # -- settlement --------------------------------------------------------------------------------------------
    def _receipt(self, worker: WorkerLink, end: ResponseEnd, settled: Settled, checked: Receipt | None = None
                 ) -> Receipt | None:
        """The worker's receipt for this answer (`checked` already: a sealed one's), countersigned with its charge;
        None when it sent none or one that does not hold."""
        receipt = checked if checked is not None else self._checked(worker, end)
        if receipt is None:
            return None
        return countersign(receipt, self.fwd.billing.key, settled, worker.params.coefficient)

    def _checked(self, worker: WorkerLink, end: ResponseEnd, sealed_answer_hash: bytes = b"") -> Receipt | None:
        """The worker's receipt for this answer if it holds (proxy/receipts.py); None when it sent none or one that
        does not hold (which counts against it as a misreport)."""
        fwd = self.fwd
        try:
            receipt = check_receipt(end.receipt, req=self.req, worker=worker.conn.peer,
                                    coefficient=worker.params.coefficient, reported=end.usage,
                                    sealed_answer_hash=sealed_answer_hash,
                                    request_hash=self.upload.digest(self.req.body) if self.upload else b"")
        except ReceiptError as exc:
            missing = end.receipt is None
            fwd.receipts["missing" if missing else "refused"] += 1
            if not missing:
                fwd.selector.record_misreport(worker)
            log.warning("answer without a valid receipt", extra={"fields": {"worker": worker.name,
                                                                            "reason": str(exc)}})
            return None
        fwd.receipts["countersigned"] += 1
        return receipt

    def _settle(self, worker: WorkerLink, call: Call, usage: Usage) -> Settled:
        """Charge the answer (once: the books refuse a second settlement of one request id), pay its worker, count
        its tokens against its paying party's limits."""
        fwd, res = self.fwd, self.res
        assert res is not None  # only an admitted request reaches a worker
        settled = fwd.billing.settle(res, worker.key, worker.name, self.req.model, usage, worker.params.coefficient)
        if settled.beyond:
            fwd.selector.record_misreport(worker)
            for kind in settled.beyond:
                fwd.metrics.beyond_bounds.labels(kind.removesuffix("_tokens")).inc()
        if settled.worker_voucher is not None and worker.conn.version >= 2:
            worker.conn.send_nowait(Payout(call_id=call.call_id, fee_nanoton=settled.charge.worker_fee,
                                           voucher=settled.worker_voucher))
        usage = settled.usage
        fwd.limiter.charge(self.client.account.limits_key, usage.total_tokens)
        for kind, n in usage.by_kind():
            if n:
                fwd.metrics.tokens.labels(kind).inc(n)
        if usage.media_ms:
            fwd.media_ms += usage.media_ms
            fwd.metrics.media_seconds.inc(usage.media_ms / 1000)
        fwd.metrics.charged.inc(settled.charge.client_cost)
        return settled


def _delivered(prompt: Usage, completion_tokens: int) -> Usage:
    """What a stream broken off after its first token is charged for: its prompt, as the worker counted it before
    that token (nothing when its engine could not tell then), and the completion tokens the client received."""
    return msgspec.structs.replace(prompt.prompt_only(), completion_tokens=completion_tokens)
