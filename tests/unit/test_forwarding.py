"""One request in flight through the proxy (proxy/forwarding.py), its workers' links replaced by in-memory fakes
that answer from a script: retries, the verdict on each worker's error, deadlines and settlement, without a network.
Everything else is the proxy's own: selector, backlog, limits, metrics, and billing with its SQLite books."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from cocoon.attest.types import PeerIdentity
from cocoon.config import ProxyConfig
from cocoon.core.errors import ErrorCode
from cocoon.core.usage import Usage
from cocoon.ledger.pricing import price_request
from cocoon.ledger.vouchers import Tag
from cocoon.proxy.backlog import Backlog
from cocoon.proxy.billing import Account, Billing, open_ledger
from cocoon.proxy.forwarding import ClientLink, Forwarder
from cocoon.proxy.limits import ClientLimiter
from cocoon.proxy.metrics import ProxyMetrics
from cocoon.proxy.registry import WorkerLink, WorkerRegistry
from cocoon.proxy.reputation import ReputationBook
from cocoon.proxy.selection import Selector
from cocoon.wire.connection import LinkLost
from cocoon.wire.messages import (
    Answer,
    Message,
    Payout,
    Request,
    ResponseChunk,
    ResponseEnd,
    ResponseError,
    ResponseHead,
    WorkerParams,
)

MODEL = "m"
CLIENT_CALL = 41  # the client's call id: every frame the client gets must carry it


# -- fakes of the two links --------------------------------------------------------------------------------------
class FakeCall:
    """A call as the proxy uses one: answers arrive on `queue` (None: the link broke), `cancel` stops it."""

    def __init__(self, call_id: int) -> None:
        self.call_id = call_id
        self.queue: asyncio.Queue[Answer | None] = asyncio.Queue()
        self.done = False
        self.cancelled: str | None = None

    async def next(self, timeout: float | None = None) -> Answer:
        msg = await self.queue.get()
        if msg is None:
            self.done = True
            self.queue.put_nowait(None)
            raise LinkLost("the fake link broke")
        if isinstance(msg, ResponseEnd | ResponseError):
            self.done = True
        return msg

    def ready(self) -> bool:
        return not self.queue.empty()

    def cancel(self, reason: str = "") -> None:
        if not self.done:
            self.done = True
            self.cancelled = reason


Script = Callable[[FakeCall, Request], None]  # puts the worker's answers to one request on its call


class FakeWorkerLink:
    """The proxy's end of a link to a worker that answers each request by the next script of a plan shared by all
    workers (`asked` records which worker each request went to, in order)."""

    version = 2

    def __init__(self, name: str, plan: list[Script], asked: list[str]) -> None:
        self.name = name
        self.plan = plan
        self.asked = asked
        self.requests: list[Request] = []
        self.calls: list[FakeCall] = []
        self.sent: list[Message] = []
        self.peer = PeerIdentity(role="worker", kind="fake", public_key=bytes(32), image_hash=None, cert_sha256=b"",
                                 not_after=0.0)  # whose key its receipts must be signed with

    async def request(self, req: Request) -> FakeCall:
        call = FakeCall(len(self.calls) + 1)
        self.requests.append(req)
        self.calls.append(call)
        self.asked.append(self.name)
        self.plan.pop(0)(call, req)
        return call

    def send_nowait(self, msg: Message) -> None:
        self.sent.append(msg)


class FakeClientConn:
    """The client's link: keeps what it is sent; `hang_up_after` frames, it breaks (the client went away)."""

    def __init__(self, hang_up_after: int | None = None) -> None:
        self.sent: list[Message] = []
        self.hang_up_after = hang_up_after

    async def send(self, msg: Message) -> None:
        self.send_soon(msg)

    def send_soon(self, msg: Message) -> None:
        if self.hang_up_after is not None and len(self.sent) >= self.hang_up_after:
            raise ConnectionResetError("the client hung up")
        self.sent.append(msg)

    async def drain(self) -> None:
        pass


# -- what workers answer -------------------------------------------------------------------------------------
def answer(prompt: int = 5, tokens: int = 3) -> Script:
    """An honest answer: streamed, or whole as a worker sends a non-streamed one."""

    def script(call: FakeCall, req: Request) -> None:
        put = call.queue.put_nowait
        usage = Usage(prompt_tokens=prompt, completion_tokens=tokens)
        if req.stream:
            put(ResponseHead(call_id=call.call_id, status=200, usage=Usage(prompt_tokens=prompt)))
            for i in range(tokens):
                put(ResponseChunk(call_id=call.call_id, data=b"token %d" % i, tokens=1))
        else:
            put(ResponseHead(call_id=call.call_id, status=200))
            put(ResponseChunk(call_id=call.call_id, data=b'{"choices": []}'))
        put(ResponseEnd(call_id=call.call_id, usage=usage))

    return script


def error(status: int, code: ErrorCode | str, param: str | None = None) -> Script:
    def script(call: FakeCall, req: Request) -> None:
        call.queue.put_nowait(ResponseError(call_id=call.call_id, status=status, message=f"worker says {status}",
                                            code=code, param=param))

    return script


def link_lost(call: FakeCall, req: Request) -> None:
    call.queue.put_nowait(None)


def silent(call: FakeCall, req: Request) -> None:
    """A worker that never answers."""


def breaks_after(tokens: int, prompt: int = 7) -> Script:
    """A stream whose worker's link breaks after `tokens` tokens."""

    def script(call: FakeCall, req: Request) -> None:
        call.queue.put_nowait(ResponseHead(call_id=call.call_id, status=200, usage=Usage(prompt_tokens=prompt)))
        for i in range(tokens):
            call.queue.put_nowait(ResponseChunk(call_id=call.call_id, data=b"token %d" % i, tokens=1))
        call.queue.put_nowait(None)

    return script


# -- a proxy around them -----------------------------------------------------------------------------------------
@dataclass
class Proxy:
    fwd: Forwarder
    plan: list[Script]
    workers: list[WorkerLink]
    order: list[str]  # the workers asked, in order

    @property
    def billing(self) -> Billing:
        return self.fwd.billing

    def link(self, worker: WorkerLink) -> FakeWorkerLink:
        assert isinstance(worker.conn, FakeWorkerLink)
        return worker.conn

    def asked(self) -> list[WorkerLink]:
        """The workers the request was sent to, in order."""
        by_name = {w.name: w for w in self.workers}
        return [by_name[name] for name in self.order]

    def failed(self, worker: WorkerLink) -> int:
        rep = self.fwd.selector.reputations.get(worker.key)
        assert rep is not None
        return rep.failed

    def charged(self) -> tuple[int, int]:
        """The books' (requests, nanoTON) charged to the one client."""
        clients = self.billing.summary()["clients"]
        if not clients:
            return 0, 0
        (books,) = clients.values()
        return books["requests"], books["charged_nanoton"]

    def cost(self, usage: Usage) -> int:
        return price_request(usage, self.billing.ledger.root_params().prices, 1000).client_cost

    async def serve(self, *, stream: bool = True, deadline_s: float = 30.0,
                    client: FakeClientConn | None = None) -> list[Message]:
        """One request through the proxy; what the client was sent."""
        conn = client or FakeClientConn()
        link = ClientLink(conn=conn, key="c1" * 32, account=Account("c1" * 32))  # type: ignore[arg-type]
        req = Request(endpoint="chat", model=MODEL, body=b'{"model": "m", "messages": []}', stream=stream,
                      include_usage=True, deadline=time.time() + deadline_s, request_id=uuid.uuid4().hex,
                      call_id=CLIENT_CALL)
        await asyncio.wait_for(self.fwd.serve(link, req), 10)
        assert all(getattr(m, "call_id", CLIENT_CALL) == CLIENT_CALL for m in conn.sent)
        return conn.sent


@pytest.fixture
def make_proxy(tmp_path: Path) -> AsyncIterator[Callable[..., Proxy]]:
    made: list[Proxy] = []

    def make(workers: int = 2, plan: list[Script] | None = None, **overrides: Any) -> Proxy:
        cfg = ProxyConfig(name="proxy-1", state_dir=str(tmp_path), port=0, **overrides)
        selector: Selector[WorkerLink] = Selector(cfg.selection, ReputationBook(keep_s=cfg.reputation_keep_s))
        fwd = Forwarder(cfg, WorkerRegistry(), selector, Backlog(selector, cfg.queue_depth),
                        Billing(cfg, open_ledger(cfg)), ClientLimiter(cfg.client_max_concurrent,
                                                                      cfg.client_tokens_per_minute), ProxyMetrics())
        proxy = Proxy(fwd, plan if plan is not None else [], [], [])
        for i in range(workers):
            conn = FakeWorkerLink(f"w{i}", proxy.plan, proxy.order)
            link = WorkerLink(conn=conn, key=f"{i:02x}" * 32, name=f"w{i}",  # type: ignore[arg-type]
                              params=WorkerParams(models=[MODEL], coefficient=1000, max_active_requests=4))
            fwd.registry.add(link)
            fwd.selector.add(link)
            proxy.workers.append(link)
        made.append(proxy)
        return proxy

    yield make  # type: ignore[misc]
    for proxy in made:
        proxy.billing.books.close()
        proxy.billing.ledger.close()


def kinds(sent: list[Message]) -> list[str]:
    return [type(m).__name__ for m in sent]


# -- retries ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["server_error", "link_lost", "first_token_timeout"])
async def test_a_worker_fault_before_the_first_token_moves_the_request_and_counts_against_that_worker(
        make_proxy: Callable[..., Proxy], fault: str) -> None:
    first = {"server_error": error(500, ErrorCode.ENGINE_ERROR), "link_lost": link_lost,
             "first_token_timeout": silent}[fault]
    proxy = make_proxy(plan=[first, answer(tokens=3)], first_token_timeout_s=0.05)
    sent = await proxy.serve()
    assert kinds(sent) == ["ResponseHead", "ResponseChunk", "ResponseChunk", "ResponseChunk", "ResponseEnd"]
    bad, good = proxy.asked()
    assert bad is not good  # not the same worker again
    assert proxy.failed(bad) == 1 and proxy.failed(good) == 0
    if fault == "first_token_timeout":
        assert proxy.link(bad).calls[0].cancelled is not None  # its work was stopped
    metrics = generate_latest(proxy.fwd.metrics.registry).decode()
    assert "cocoon_proxy_retries_total" in metrics and proxy.fwd.outcomes == {"ok": 1}


async def test_a_4xx_from_a_worker_is_the_clients_answer_and_counts_against_nobody(
        make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(plan=[error(400, ErrorCode.INVALID_VALUE, param="messages")])
    sent = await proxy.serve()
    assert kinds(sent) == ["ResponseError"]
    refused = sent[0]
    assert isinstance(refused, ResponseError)
    assert (refused.status, refused.code, refused.param) == (400, "invalid_value", "messages")
    assert len(proxy.asked()) == 1  # not retried
    assert [proxy.failed(w) for w in proxy.workers] == [0, 0]


@pytest.mark.parametrize("code", [ErrorCode.FIRST_TOKEN_TIMEOUT, ErrorCode.IDLE_TIMEOUT, "made_up"])
async def test_a_4xx_is_never_held_against_its_worker_whatever_code_it_carries(
        make_proxy: Callable[..., Proxy], code: str) -> None:
    proxy = make_proxy(workers=1, plan=[error(408, code)])
    sent = await proxy.serve()
    assert kinds(sent) == ["ResponseError"] and proxy.failed(proxy.workers[0]) == 0


async def test_a_429_moves_the_request_to_another_worker_and_counts_against_nobody(
        make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(plan=[error(429, ErrorCode.CONCURRENCY_LIMIT_EXCEEDED), answer(tokens=2)])
    sent = await proxy.serve(stream=False)
    assert kinds(sent) == ["ResponseHead", "ResponseChunk", "ResponseEnd"]
    busy, other = proxy.asked()
    assert busy is not other and [proxy.failed(w) for w in proxy.workers] == [0, 0]


async def test_the_request_is_charged_once_across_retries(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(workers=3, plan=[link_lost, error(502, ErrorCode.ENGINE_ERROR), answer(prompt=5, tokens=4)])
    sent = await proxy.serve(stream=False)
    end = sent[-1]
    assert isinstance(end, ResponseEnd)
    cost = proxy.cost(Usage(prompt_tokens=5, completion_tokens=4))
    assert end.cost_nanoton == cost and proxy.charged() == (1, cost)
    lost, failing, answered = proxy.asked()
    assert (proxy.failed(lost), proxy.failed(failing), proxy.failed(answered)) == (1, 1, 0)


async def test_after_max_attempts_the_client_gets_the_last_workers_error(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(workers=3, max_attempts=2,
                       plan=[error(500, ErrorCode.ENGINE_ERROR), error(503, ErrorCode.ENGINE_UNAVAILABLE)])
    sent = await proxy.serve()
    assert kinds(sent) == ["ResponseError"]
    last = sent[0]
    assert isinstance(last, ResponseError)
    assert (last.status, last.code, last.retry_after) == (503, "engine_unavailable", 1)
    assert "gave up after 2 workers" in last.message and len(proxy.asked()) == 2
    assert proxy.charged() == (0, 0)


async def test_a_non_streamed_answer_not_sent_in_time_moves_to_another_worker(
        make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(plan=[silent, answer(tokens=2)], whole_timeout_s=0.05)
    sent = await proxy.serve(stream=False)
    assert kinds(sent) == ["ResponseHead", "ResponseChunk", "ResponseEnd"]
    silent_worker, other = proxy.asked()
    assert proxy.link(silent_worker).calls[0].cancelled is not None and proxy.failed(other) == 0
    assert proxy.failed(silent_worker) == 1  # no worker holds a slot until the request's deadline


# -- deadlines -------------------------------------------------------------------------------------------------
async def test_a_request_whose_deadline_passed_gets_504_and_reaches_no_worker(
        make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(plan=[answer()])
    sent = await proxy.serve(deadline_s=-1)
    assert kinds(sent) == ["ResponseError"]
    late = sent[0]
    assert isinstance(late, ResponseError) and (late.status, late.code) == (504, "request_timeout")
    assert proxy.asked() == []


async def test_a_worker_silent_until_the_deadline_gives_504_and_is_not_blamed_for_it(
        make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(workers=1, plan=[silent])
    sent = await proxy.serve(stream=False, deadline_s=0.1)
    late = sent[-1]
    assert isinstance(late, ResponseError) and (late.status, late.code) == (504, "request_timeout")
    assert proxy.failed(proxy.workers[0]) == 0 and proxy.link(proxy.workers[0]).calls[0].cancelled is not None


# -- settlement ------------------------------------------------------------------------------------------------
async def test_a_broken_stream_is_charged_its_prompt_and_the_tokens_delivered(
        make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(workers=1, plan=[breaks_after(3, prompt=7)])
    sent = await proxy.serve()
    assert kinds(sent) == ["ResponseHead", "ResponseChunk", "ResponseChunk", "ResponseChunk", "ResponseError"]
    broken = sent[-1]
    assert isinstance(broken, ResponseError) and broken.code == "worker_failed"
    usage = Usage(prompt_tokens=7, completion_tokens=3)
    assert broken.usage == usage and broken.cost_nanoton == proxy.cost(usage) == proxy.charged()[1]
    assert proxy.charged()[0] == 1 and proxy.failed(proxy.workers[0]) == 1


async def test_a_client_hanging_up_mid_stream_pays_for_what_it_received(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(workers=1, plan=[answer(prompt=6, tokens=10)])
    sent = await proxy.serve(client=FakeClientConn(hang_up_after=3))  # the head and two tokens
    assert kinds(sent) == ["ResponseHead", "ResponseChunk", "ResponseChunk"]
    assert proxy.charged() == (1, proxy.cost(Usage(prompt_tokens=6, completion_tokens=2)))
    assert proxy.link(proxy.workers[0]).calls[0].cancelled is not None  # the worker stops generating
    assert proxy.fwd.outcomes == {"client_link_lost": 1}


async def test_settlement_sends_the_worker_its_payout(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(workers=1, plan=[answer(prompt=5, tokens=3), answer(prompt=5, tokens=3)])
    worker = proxy.workers[0]
    channel = "0:" + "ab" * 32
    proxy.billing.books.set_worker_channel(worker.key, channel, redeemed=0)
    await proxy.serve()
    await proxy.serve(stream=False)
    payouts = [m for m in proxy.link(worker).sent if isinstance(m, Payout)]
    fee = price_request(Usage(prompt_tokens=5, completion_tokens=3), proxy.billing.ledger.root_params().prices,
                        1000).worker_fee
    assert [p.fee_nanoton for p in payouts] == [fee, fee] and fee > 0
    assert [p.call_id for p in payouts] == [call.call_id for call in proxy.link(worker).calls]  # the worker's ids
    for n, payout in enumerate(payouts, 1):
        assert (payout.voucher.tag, payout.voucher.contract, payout.voucher.amount) == (Tag.PAYOUT, channel, n * fee)
        payout.voucher.verify(proxy.billing.key.public_key, proxy.billing.ledger.global_id())
    assert proxy.billing.summary()["workers"][worker.key]["earned_nanoton"] == 2 * fee


async def test_every_answer_is_counted_against_its_paying_partys_token_allowance(
        make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(workers=1, plan=[answer(prompt=5, tokens=30)], client_tokens_per_minute=20)
    await proxy.serve()
    sent = await proxy.serve()  # the first answer overdrew the minute
    refused = sent[0]
    assert isinstance(refused, ResponseError) and refused.code == "tokens_per_minute_exceeded"
    assert len(proxy.link(proxy.workers[0]).requests) == 1

