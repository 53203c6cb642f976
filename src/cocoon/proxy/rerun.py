"""Spot checks, the re-execution (issue 11 item 4; the decisions are proxy/spotcheck.py).

After a sampled request's answer has reached its client, `SpotChecker` re-runs it in the background on another
free worker announcing the same model, with the same image hash (a worker of another image is another program, not
a witness), and compares the two answers' content digests; on a mismatch a third such worker referees. Nothing here
is on the client's path: its answer went out before the check starts, and a check never waits for a busy worker
(none free: the check is skipped). The checks' cost is the proxy's: no client is charged for a re-execution, and its
worker is paid its fee like for any answer (its usage held to the checked request's bounds), through the books and
a payout voucher (`Billing.pay_check`), so a checking worker is paid as it would be by a client; the fees are counted
in `stats()` and in the books (`checks_nanoton`).

A sealed request marked deterministic is re-run as it came, byte for byte (its request id and deadline are bound
into the seal), on another worker it was sealed to: only those can open it, and each worker opens one sealed request
at most once (its replay guard), so it never goes back to a worker that was sent it. Each run's content digest is
the one its worker signed in its receipt, checked here against the sealed answer as relayed; the re-run's sealed
answer itself is dropped unread.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import msgspec

from cocoon.config import SpotCheckConfig
from cocoon.core.ids import new_request_id, request_scope
from cocoon.ledger.pricing import Bounds
from cocoon.ledger.receipts import ReceiptError
from cocoon.proxy.backlog import Backlog
from cocoon.proxy.billing import Billing
from cocoon.proxy.metrics import ProxyMetrics
from cocoon.proxy.receipts import check_receipt
from cocoon.proxy.registry import WorkerLink, WorkerRegistry
from cocoon.proxy.selection import Selector
from cocoon.proxy.spotcheck import (
    FAILED,
    PASSED,
    UNRESOLVED,
    Execution,
    Sample,
    SpotEvidence,
    SpotSampler,
    execution,
    judge,
)
from cocoon.seal import AnswerDigest, peek
from cocoon.wire.connection import LinkLost
from cocoon.wire.messages import Payout, Request, ResponseChunk, ResponseEnd, ResponseError

log = logging.getLogger(__name__)


def image_of(worker: WorkerLink) -> str | None:
    """The image hash (hex) the worker's certificate proved, as last verified."""
    image = worker.conn.stream.peer.image_hash
    return image.hex() if image else None


class SpotChecker:
    def __init__(self, cfg: SpotCheckConfig, registry: WorkerRegistry, selector: Selector[WorkerLink],
                 backlog: Backlog[WorkerLink], billing: Billing, rng: random.Random | None = None,
                 metrics: ProxyMetrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.registry = registry
        self.selector = selector
        self.backlog = backlog
        self.billing = billing  # pays the checking workers, as the proxy's cost
        self.sampler = SpotSampler(cfg.share, rng)
        self._tasks: set[asyncio.Task[None]] = set()
        self.counts = {PASSED: 0, FAILED: 0, UNRESOLVED: 0, "skipped": 0}
        self.runs = 0  # re-executions answered (checks and referees)
        self.cost_nanoton = 0  # the worker fees paid for those runs: the proxy's cost, never a client's
        self.tokens = 0

    def sample(self, req: Request, bounds: Bounds | None = None) -> Sample | None:
        """A `Sample` to fill with the answer's payloads when `req` (which can produce `bounds`) is to be
        checked."""
        return self.sampler.sample(req, bounds)

    def submit(self, sample: Sample, worker: WorkerLink, end: ResponseEnd) -> None:
        """The sampled request's answer reached its client from `worker`: check it in the background."""
        if len(self._tasks) >= self.cfg.max_in_flight:
            self._count("skipped")
            return
        original = execution(worker.key, worker.name, sample.payloads, end, sealed=sample.req.sealed)
        if original is None:  # a sealed answer whose receipt states no content digest: nothing to compare
            self._count("skipped")
            return
        task = asyncio.get_running_loop().create_task(
            self._check(sample, worker, original, frozenset(sample.tried | {worker.key})))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _check(self, sample: Sample, worker: WorkerLink, original: Execution, tried: frozenset[str]) -> None:
        with request_scope(sample.req.request_id):
            try:
                await self._compare(sample, worker, original, tried)
            except Exception:  # a background check must never take the proxy down: log it and go on
                log.exception("spot check failed to run")

    async def _compare(self, sample: Sample, worker: WorkerLink, original: Execution, tried: frozenset[str]
                       ) -> None:
        """`tried`: the keys of every worker the request was sent to, which none of its re-runs may go to."""
        req = sample.req
        image = image_of(worker)
        runs, links = [original], [worker]
        while len(runs) < 3:
            other = await self._run_elsewhere(sample, image, tried | {w.key for w in links})
            if other is None:
                break
            runs.append(other[0])
            links.append(other[1])
            if len(runs) == 2 and runs[1].digest == original.digest:
                break
        if len(runs) < 2:
            self._count("skipped")
            log.info("spot check skipped: no other free worker of the same model and image",
                     extra={"fields": {"worker": worker.name, "model": req.model}})
            return
        verdict, blamed = judge(runs)
        self._count(verdict)
        evidence = None if verdict == PASSED else SpotEvidence(
            request_id=req.request_id, model=req.model, image_hash=image, checked_at=time.time(), verdict=verdict,
            blamed=blamed, runs=runs)
        for link in links:
            self.selector.record_spot_check(link, verdict, evidence, link.key == blamed, self.cfg)
        if evidence is not None:
            log.warning("spot check mismatch", extra={"fields": {
                "verdict": verdict, "model": req.model, "blamed": next((lk.name for lk in links if lk.key == blamed),
                                                                       None),
                "evidence": msgspec.to_builtins(evidence)}})

    async def _run_elsewhere(self, sample: Sample, image: str | None, used: frozenset[str]
                             ) -> tuple[Execution, WorkerLink] | None:
        """Run `req` once more on a free worker of the same model and image whose key is not in `used` (and, for a
        sealed request, that it was sealed to)."""
        req = sample.req

        def unfit(w: WorkerLink) -> bool:
            return w.key in used or image_of(w) != image or req.model not in w.params.models

        if req.sealed:  # only the few workers it was sealed to can open it: found by key id, chosen among them alone
            only = tuple(w for w in self.registry.holding(peek(req.body).key_ids) if not unfit(w))
            worker = self.selector.choose(req.model, "", None, (), bool(req.features), only)
        else:
            exclude = tuple(w for w in self.registry.workers() if unfit(w))
            worker = self.selector.choose(req.model, "", None, exclude, bool(req.features))
        if worker is None:
            return None
        try:
            run = await self._execute(worker, req, sample.bounds)
        finally:
            self.backlog.release(worker)
        return (run, worker) if run is not None else None

    async def _execute(self, worker: WorkerLink, req: Request, bounds: Bounds | None) -> Execution | None:
        """The worker's answer to a copy of `req` under a request id of its own (a sealed request: `req` itself,
        whose id and deadline its seal binds); None when it did not answer (a failure to answer is the ordinary
        path's business, never a mismatch) or, sealed, without a receipt that holds for what it sent."""
        again = req if req.sealed else msgspec.structs.replace(req, request_id=new_request_id(),
                                                               deadline=time.time() + self.cfg.timeout_s)
        payloads: list[bytes] = []
        try:
            call = await worker.conn.request(again)
        except ConnectionError:
            return None
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                end = None
                while end is None:
                    msg = await call.next()
                    if isinstance(msg, ResponseChunk):
                        payloads.append(msg.data)
                    elif isinstance(msg, ResponseEnd):
                        end = msg
                    elif isinstance(msg, ResponseError):
                        return None
        except (LinkLost, TimeoutError):
            return None
        finally:
            call.cancel("spot check over")
        if req.sealed and not self._receipt_holds(worker, req, payloads, end):
            return None
        self.runs += 1
        self.tokens += end.usage.total_tokens
        # one run per worker and request (never back to a worker that had it): the id of its row in the books
        paid = self.billing.pay_check(f"{again.request_id}@{worker.key}", worker.key, req.model, end.usage,
                                      worker.params.coefficient, bounds)
        if paid.worker_voucher is not None and worker.conn.version >= 2:
            worker.conn.send_nowait(Payout(call_id=call.call_id, fee_nanoton=paid.charge.worker_fee,
                                           voucher=paid.worker_voucher))
        self.cost_nanoton += paid.charge.worker_fee
        if self.metrics is not None:
            self.metrics.spot_check_cost.inc(paid.charge.worker_fee)
        return execution(worker.key, worker.name, payloads, end, sealed=req.sealed)

    def _receipt_holds(self, worker: WorkerLink, req: Request, sealed: list[bytes], end: ResponseEnd) -> bool:
        """Whether the worker signed, for this sealed request, the sealed answer relayed (`sealed` and the end
        marker) with a content digest: the one thing a check reads of an answer it cannot open. A receipt that
        does not hold counts against its worker as a misreport."""
        try:
            check_receipt(end.receipt, req=req, worker=worker.conn.peer, coefficient=worker.params.coefficient,
                          reported=end.usage, sealed_answer_hash=AnswerDigest.over(sealed, end.sealed_end))
        except ReceiptError as exc:
            if end.receipt is not None:
                self.selector.record_misreport(worker)
            log.warning("spot check run without a valid receipt", extra={"fields": {
                "worker": worker.name, "reason": str(exc)}})
            return False
        return True

    def _count(self, verdict: str) -> None:
        self.counts[verdict] += 1
        if self.metrics is not None:
            self.metrics.spot_checks.labels(verdict).inc()

    def stats(self) -> dict[str, Any]:
        return {"share": self.cfg.share, "deterministic_requests": self.sampler.deterministic,
                "sampled": self.sampler.sampled, **self.counts, "in_flight": len(self._tasks), "runs": self.runs,
                "tokens": self.tokens, "cost_nanoton": self.cost_nanoton}
