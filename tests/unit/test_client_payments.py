"""The client's check of its charges (issue 15 item 8): a proxy's real books settle requests and sign cumulative
vouchers in one order, the client's real payments (voucher book, signatures, local chain) see the answers end in
another. Honest traffic raises no alarm in any order; a voucher above every answer it could cover, or an answer
priced above its usage at the prices on chain and its worker's coefficient, is caught."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.client.audit import ChargeAudit
from cocoon.client.payments import ClientPayments
from cocoon.client.receipts import dispute_evidence
from cocoon.config import ClientConfig, Prices, ProxyConfig
from cocoon.core.ids import new_request_id as rid
from cocoon.core.usage import Usage
from cocoon.ledger.base import TON, Terms
from cocoon.ledger.contracts import Tag
from cocoon.ledger.devnet import ProxySpec, prepare, vouchers_path
from cocoon.ledger.pricing import price_request
from cocoon.ledger.receipts import Receipt, request_digest
from cocoon.ledger.vouchers import Voucher, sign_voucher
from cocoon.ledger.wallet import Wallet
from cocoon.nodekeys import NodeKeys
from cocoon.proxy.billing import Account, Billing, open_ledger
from cocoon.proxy.receipts import countersign
from cocoon.wire.messages import Request, ResponseEnd, ResponseError

ENDPOINT = "127.0.0.1:10100"
TLS_KEY = b"\x55" * 32
WORKER = "worker-key"
WORKER_KEY = Wallet(b"\x66" * 32)  # signs the worker's receipts
BODY = b'{"messages": "' + b"x" * 400 + b'"}'  # a body that can hold every prompt these tests report


@dataclass
class Proxy:
    """The proxy's side: its real books, on a local chain where the client `alice` has a funded channel."""

    state: Path
    billing: Billing
    account: Account | None = None

    def client(self, cap: int | None = None) -> ClientPayments:
        """A fresh client process on the vouchers the last one kept."""
        cfg = ClientConfig(name="alice", state_dir=str(self.state), payments=True, proxy=ENDPOINT,
                           default_max_coefficient=cap)
        payments = ClientPayments(cfg, TLS_KEY)
        payments.open()
        if self.account is None:
            self.account = asyncio.run(self.billing.open_account(TLS_KEY, payments.client_params(ENDPOINT)))
            assert self.account.channel is not None
        return payments

    def settle(self, request_id: str, usage: Usage, coefficient: int = 1000, *, priced_at: int | None = None
               ) -> ResponseEnd:
        """Admit, settle in the books and answer as the proxy does; `priced_at`: the coefficient the books really
        use (a dishonest proxy's), when it differs from the one announced."""
        assert self.account is not None
        priced_at = priced_at or coefficient
        req = Request(endpoint="chat", model="m", body=BODY, stream=True, include_usage=True, deadline=0,
                      request_id=request_id, max_tokens=1000)
        res = self.billing.admit(req, self.account, priced_at)
        try:
            settled = self.billing.settle(res, WORKER, "worker-1", "m", usage, priced_at)
        finally:
            self.billing.end(res)
        assert not settled.beyond
        receipt = Receipt(request_id=request_id, request_hash=request_digest(BODY), answer_hash=bytes(32),
                          model="m", usage=usage, coefficient=coefficient, worker_key=WORKER_KEY.public_key,
                          issued_at=0).sign(WORKER_KEY.sign)
        return ResponseEnd(call_id=0, usage=settled.usage, cost_nanoton=settled.charge.client_cost,
                           voucher=settled.client_voucher, coefficient=coefficient,
                           receipt=countersign(receipt, self.billing.key, settled, coefficient))

    def charged(self) -> int:
        assert self.account is not None
        return self.billing.books.summary()["clients"][self.account.id]["charged_nanoton"]

    def prices(self) -> Prices:
        return self.billing.ledger.root_params().prices

    def close(self) -> None:
        asyncio.run(self.billing.stop())
        self.billing.ledger.close()


def ended(payments: ClientPayments, ticket: int, last: ResponseEnd | ResponseError | None) -> None:
    """`last` reaches the client with the receipt it carries (checked by the client API, client/receipts.py)."""
    payments.end(ticket, last, last.receipt if isinstance(last, ResponseEnd) else None, checked=True)


def start_proxy(state: Path) -> Proxy:
    cfg = ProxyConfig(name="proxy-1", state_dir=str(state), payments=True, port=10100)
    keys = NodeKeys("proxy", cfg)
    alice = NodeKeys("client", ClientConfig(name="alice", state_dir=str(state))).wallet()
    prepare(state, proxies=[ProxySpec(ENDPOINT, keys.wallet(), keys.voucher_key())], parties=[alice],
            prices=Prices(), terms=Terms()).close()
    billing = Billing(cfg, open_ledger(cfg))
    asyncio.run(billing.start(ENDPOINT))
    return Proxy(state, billing)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """One chain for every hypothesis example: each example is a new client process on the same channel."""
    proxy = start_proxy(tmp_path_factory.mktemp("shared"))
    yield proxy
    proxy.close()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    p = start_proxy(tmp_path)
    yield p
    p.close()


USAGE = st.builds(Usage, prompt_tokens=st.integers(0, 300), completion_tokens=st.integers(0, 300))
# what becomes of a request: answered whole, broken off mid-stream (charged for what was delivered), refused
# before any work (nothing charged), or charged by the proxy but its end never reached the client
FATES = st.sampled_from(["answered", "broken", "refused", "lost"])


@dataclass
class Flight:
    fate: str
    usage: Usage
    request_id: str = field(default_factory=rid)
    ticket: int = -1  # -1: not sent yet
    answer: ResponseEnd | ResponseError | None = None  # once settled
    ended: bool = False


def finish(proxy: Proxy, payments: ClientPayments, f: Flight) -> None:
    if f.fate == "lost":
        ended(payments, f.ticket, None)
    elif f.fate == "refused":
        ended(payments, f.ticket, ResponseError(call_id=0, status=429, message="busy",
                                               code="concurrency_limit_exceeded"))
    else:
        ended(payments, f.ticket, f.answer)


def settle(proxy: Proxy, f: Flight) -> None:
    end = proxy.settle(f.request_id, f.usage)
    if f.fate == "broken":  # what a stream broken after its first tokens ends with
        f.answer = ResponseError(call_id=0, status=502, message="broke off", code="worker_failed", usage=end.usage,
                                 cost_nanoton=end.cost_nanoton, voucher=end.voucher, coefficient=end.coefficient)
    else:
        f.answer = end


@settings(max_examples=50, deadline=None)
@given(data=st.data(), fates=st.lists(st.tuples(FATES, USAGE), min_size=1, max_size=10))
def test_answers_ending_in_any_order_raise_no_false_alarm(shared: Proxy, data: st.DataObject,
                                                           fates: list[tuple[str, Usage]]) -> None:
    """Requests are sent, settled by the proxy and end at the client in any order that causality allows (sent
    before settled before ended), lost and refused ones among them: at no step is a voucher refused or an
    over-charge found, and nothing is unexplained but what lost answers cost."""
    payments = shared.client()
    flights = [Flight(fate, usage) for fate, usage in fates]
    try:
        while True:
            unsent = [f for f in flights if f.ticket < 0][:1]  # requests leave in ticket order
            steps = [("send", f) for f in unsent]
            steps += [("settle", f) for f in flights if f.ticket >= 0 and f.answer is None and f.fate != "refused"]
            # a lost answer's end never comes: the client's side of it may end before the proxy settles it
            steps += [("end", f) for f in flights if f.ticket >= 0 and not f.ended
                      and (f.answer is not None or f.fate in ("refused", "lost"))]
            if not steps:
                break
            step, f = data.draw(st.sampled_from(steps))
            if step == "send":
                f.ticket = payments.begin(f.request_id)
            elif step == "settle":
                settle(shared, f)
            else:
                finish(shared, payments, f)
                f.ended = True
            assert (payments.refused_vouchers, payments.overcharges, payments.overpriced_nanoton) == (0, 0, 0)
            if all(f.fate != "lost" for f in flights):
                assert payments.unexplained_nanoton == 0
        sync(shared, payments)
        lost = sum(f.answer.cost_nanoton for f in flights if f.fate == "lost" and f.answer is not None)
        assert payments.unexplained_nanoton == lost
        assert payments.audit.unseen_answers == sum(f.fate == "lost" for f in flights)
        assert (payments.refused_vouchers, payments.overcharges) == (0, 0)
        assert payments.charged_nanoton == shared.charged()  # the newest voucher is kept, whatever the order
    finally:
        # an example abandoned midway leaves nothing behind that the next one's client never saw
        for f in flights:
            if f.ticket >= 0 and not f.ended:
                if f.answer is None and f.fate != "refused":
                    settle(shared, f)
                finish(shared, payments, f)
        sync(shared, payments)
        payments.close()


def sync(proxy: Proxy, payments: ClientPayments) -> None:
    """One more answer, alone: its voucher covers everything, so its check is exact."""
    f = Flight("answered", Usage(prompt_tokens=1, completion_tokens=1))
    f.ticket = payments.begin(f.request_id)
    settle(proxy, f)
    finish(proxy, payments, f)


def test_a_voucher_above_every_answer_it_can_cover_is_caught_once_they_ended(
        proxy: Proxy, caplog: pytest.LogCaptureFixture) -> None:
    """A proxy over-charges by 5000 nanoTON in the voucher of one of three concurrent answers, which arrives
    first: the client waits for the other two (they could be in it), then finds the 5000 and logs the request.
    Requests sent after that voucher arrived, answered or lost meanwhile, neither hide nor excuse it."""
    payments = proxy.client()
    try:
        flights = [Flight("answered", Usage(prompt_tokens=10, completion_tokens=10 * i)) for i in (1, 2, 3)]
        for f in flights:
            f.ticket = payments.begin(f.request_id)
        for f in flights:
            settle(proxy, f)
        honest = flights[2].answer
        assert isinstance(honest, ResponseEnd) and honest.voucher is not None
        # signed ahead of the books' seqno, so that the honest vouchers after it are older
        inflated = sign_voucher(proxy.billing.key, Tag.CHARGE, honest.voucher.contract, honest.voucher.seqno + 100,
                                honest.voucher.amount + 5000, global_id=honest.voucher.global_id)
        flights[2].answer = ResponseEnd(call_id=0, usage=honest.usage, cost_nanoton=honest.cost_nanoton,
                                        voucher=inflated, coefficient=1000, receipt=honest.receipt)
        later = [Flight("answered", Usage(completion_tokens=2)), Flight("lost", Usage(completion_tokens=2))]
        with caplog.at_level(logging.WARNING, logger="cocoon.client"):
            finish(proxy, payments, flights[2])
            assert (payments.unexplained_nanoton, payments.overcharges) == (0, 0)  # the others may be in it
            for f in later:
                f.ticket = payments.begin(f.request_id)
                settle(proxy, f)
                finish(proxy, payments, f)
            finish(proxy, payments, flights[0])
            assert (payments.unexplained_nanoton, payments.overcharges) == (0, 0)
            finish(proxy, payments, flights[1])
        assert (payments.unexplained_nanoton, payments.overcharges) == (5000, 1)
        assert payments.superseded_vouchers == 3 and payments.refused_vouchers == 0
        (alarm,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert alarm.levelno == logging.ERROR and "over-charge" in alarm.getMessage()
        assert alarm.fields["request_id"] == flights[2].request_id  # type: ignore[attr-defined]
        assert alarm.fields["unexplained_nanoton"] == 5000  # type: ignore[attr-defined]
    finally:
        payments.close()


def test_a_charge_no_answer_explains_after_a_lost_answer_is_unexplained_not_an_overcharge(proxy: Proxy) -> None:
    payments = proxy.client()
    try:
        lost, seen = Flight("lost", Usage(completion_tokens=7)), Flight("answered", Usage(completion_tokens=3))
        for f in (lost, seen):
            f.ticket = payments.begin(f.request_id)
            settle(proxy, f)
        finish(proxy, payments, seen)
        assert payments.unexplained_nanoton == 0  # the lost one is still in flight: it may be in the voucher
        finish(proxy, payments, lost)
        assert lost.answer is not None
        assert (payments.unexplained_nanoton, payments.overcharges) == (lost.answer.cost_nanoton, 0)
    finally:
        payments.close()


def test_an_answer_priced_above_the_coefficient_its_proxy_names_is_caught(proxy: Proxy) -> None:
    """The proxy's books charge at twice the coefficient it names in the answer (the voucher agrees with the
    cost, so only the price check sees it)."""
    payments = proxy.client()
    try:
        usage = Usage(prompt_tokens=20, completion_tokens=40)
        ticket = payments.begin(rid())
        ended(payments, ticket, proxy.settle(rid(), usage, 1000, priced_at=2000))
        fair = price_request(usage, proxy.prices(), 1000).client_cost
        assert fair > 0
        assert (payments.overcharges, payments.overpriced_nanoton) == (1, fair)  # charged 2 × fair
        assert (payments.unexplained_nanoton, payments.refused_vouchers) == (0, 0)
    finally:
        payments.close()


@pytest.mark.parametrize(("cap", "named", "overpriced"), [
    (None, 1500, False),  # no cap: any coefficient the proxy names, priced right, is fine
    (1500, 1500, False),
    (1000, 1500, True),  # a worker dearer than this client's cap: caught, the excess is what the cap allows
    (1000, 0, False),  # an older proxy names no coefficient: priced at the cap, within it
    (None, 0, False),  # nothing to price against
])
def test_the_coefficient_is_checked_against_the_clients_cap(proxy: Proxy, cap: int | None, named: int,
                                                             overpriced: bool) -> None:
    payments = proxy.client(cap=cap)
    try:
        usage = Usage(prompt_tokens=20, completion_tokens=40)
        ticket = payments.begin(rid())
        end = proxy.settle(rid(), usage, named or 1000)
        ended(payments, ticket, ResponseEnd(call_id=0, usage=usage, cost_nanoton=end.cost_nanoton,
                                          voucher=end.voucher, coefficient=named, receipt=end.receipt))
        at_cap = price_request(usage, proxy.prices(), cap or 0).client_cost
        assert payments.overcharges == int(overpriced)
        assert payments.overpriced_nanoton == (end.cost_nanoton - at_cap if overpriced else 0)
    finally:
        payments.close()


def test_a_worker_above_the_cap_is_caught_even_when_priced_within_it(proxy: Proxy) -> None:
    payments = proxy.client(cap=1000)
    try:
        usage = Usage(completion_tokens=40)
        ticket = payments.begin(rid())
        ended(payments, ticket, proxy.settle(rid(), usage, 1500, priced_at=1000))
        assert (payments.overcharges, payments.overpriced_nanoton) == (1, 0)  # nothing charged beyond the cap
    finally:
        payments.close()


def test_an_older_proxy_priced_above_the_cap_is_caught(proxy: Proxy) -> None:
    payments = proxy.client(cap=1000)
    try:
        usage = Usage(completion_tokens=40)
        ticket = payments.begin(rid())
        end = proxy.settle(rid(), usage, 1000, priced_at=1100)
        ended(payments, ticket, ResponseEnd(call_id=0, usage=usage, cost_nanoton=end.cost_nanoton,
                                          voucher=end.voucher, receipt=end.receipt))
        assert payments.overcharges == 1
    finally:
        payments.close()


def test_a_cost_without_usage_is_an_overcharge(proxy: Proxy) -> None:
    payments = proxy.client()
    try:
        ticket = payments.begin(rid())
        end = proxy.settle(rid(), Usage(completion_tokens=5))
        ended(payments, ticket, ResponseError(call_id=0, status=502, message="broke", cost_nanoton=end.cost_nanoton,
                                           voucher=end.voucher, coefficient=1000))
        assert (payments.overcharges, payments.overpriced_nanoton) == (1, end.cost_nanoton)
    finally:
        payments.close()


@pytest.mark.parametrize("forgery", ["other_key", "other_network", "other_channel", "older_but_higher",
                                     "same_seqno_other_amount"])
def test_invalid_or_inconsistent_vouchers_are_refused_not_kept(proxy: Proxy, forgery: str) -> None:
    payments = proxy.client()
    try:
        tickets = [payments.begin(rid()) for _ in range(3)]
        first, second = (proxy.settle(rid(), Usage(completion_tokens=n)) for n in (5, 6))
        assert first.voucher is not None and second.voucher is not None
        ended(payments, tickets[1], second)
        v, key, net = second.voucher, proxy.billing.key, second.voucher.global_id
        bad = {
            "other_key": sign_voucher(Wallet(b"\x01" * 32), Tag.CHARGE, v.contract, v.seqno + 1, v.amount + 1,
                                      global_id=net),
            "other_network": sign_voucher(key, Tag.CHARGE, v.contract, v.seqno + 1, v.amount + 1, global_id=net + 1),
            "other_channel": sign_voucher(key, Tag.CHARGE, Wallet(b"\x02" * 32).address, v.seqno + 1, v.amount,
                                          global_id=net),
            "older_but_higher": sign_voucher(key, Tag.CHARGE, v.contract, first.voucher.seqno, v.amount + 1,
                                             global_id=net),
            "same_seqno_other_amount": sign_voucher(key, Tag.CHARGE, v.contract, v.seqno, v.amount - 1,
                                                    global_id=net),
        }[forgery]
        ended(payments, tickets[2], ResponseEnd(call_id=0, usage=Usage(), voucher=bad))
        assert payments.refused_vouchers == 1
        assert payments.charged_nanoton == v.amount  # the kept voucher is still the genuine newest
        ended(payments, tickets[0], first)  # the genuine older one: superseded, not refused
        assert (payments.refused_vouchers, payments.superseded_vouchers, payments.overcharges) == (1, 1, 0)
    finally:
        payments.close()


def test_a_voucher_is_kept_even_when_older_ones_arrive_after_it(proxy: Proxy) -> None:
    payments = proxy.client()
    try:
        tickets = [payments.begin(rid()) for _ in range(3)]
        ends = [proxy.settle(rid(), Usage(completion_tokens=n)) for n in (1, 2, 3)]
        for ticket, end in reversed(list(zip(tickets, ends, strict=True))):
            ended(payments, ticket, end)
        newest: Voucher | None = ends[-1].voucher
        assert newest is not None and payments.charged_nanoton == newest.amount == proxy.charged()
        assert (payments.superseded_vouchers, payments.refused_vouchers, payments.unexplained_nanoton) == (2, 0, 0)
    finally:
        payments.close()


def test_an_earlier_runs_unseen_answers_are_unexplained_not_an_overcharge(proxy: Proxy) -> None:
    """A client stopped with an answer in flight, which the proxy charged: the next run's first voucher holds it."""
    before = proxy.client()
    before.begin(rid())
    lost = proxy.settle(rid(), Usage(completion_tokens=9))
    before.close()
    after = proxy.client()
    try:
        ticket = after.begin(rid())
        ended(after, ticket, proxy.settle(rid(), Usage(completion_tokens=4)))
        assert (after.unexplained_nanoton, after.overcharges) == (lost.cost_nanoton, 0)
    finally:
        after.close()


def charge(seqno: int, amount: int) -> Voucher:
    return Voucher(Tag.CHARGE, 0, "ch", seqno, amount)


def test_an_earlier_runs_doubt_lasts_until_its_requests_deadline() -> None:
    """An earlier run's requests are charged until their deadline (10 s here): until then a charge no answer
    explains may be theirs; after an exact check of a voucher arriving later, it is an over-charge."""
    now = [0.0]
    audit = ChargeAudit(clock=lambda: now[0])
    audit.open("ch", None, inherited_s=10)

    def answer(voucher: Voucher) -> None:
        audit.end(audit.begin(rid()), seen=True, channel="ch", cost=5, voucher=voucher)

    answer(charge(1, 105))  # 100 charged for the earlier run's answers
    assert (audit.unexplained_nanoton, audit.overcharges) == (100, 0)
    now[0] = 5
    answer(charge(2, 210))  # 100 more of the earlier run's, settled late (a long answer it had waited for)
    assert (audit.unexplained_nanoton, audit.overcharges) == (200, 0)
    now[0] = 10.5
    answer(charge(3, 215))  # past every deadline of the earlier run: all its charges are in here
    assert (audit.unexplained_nanoton, audit.overcharges, audit.settled) == (200, 0, True)
    answer(charge(4, 230))  # 10 more than the answer explains
    assert (audit.unexplained_nanoton, audit.overcharges) == (210, 1)


def test_an_earlier_runs_doubt_ends_only_with_an_exact_check() -> None:
    """Past the deadline, answers A and B: A's voucher arrives first and is checked with B counted, whose charge
    is only in B's newer voucher. That check understates the earlier run's 100, so it must not end the doubt:
    B's voucher, checked next, finds all 100, and it is still the earlier run's, not an over-charge."""
    now = [0.0]
    audit = ChargeAudit(clock=lambda: now[0])
    audit.open("ch", None, inherited_s=10)
    now[0] = 20
    a, b = audit.begin("a"), audit.begin("b")
    audit.end(a, seen=True, channel="ch", cost=5, voucher=charge(1, 105))
    audit.end(b, seen=True, channel="ch", cost=7, voucher=charge(2, 112))
    assert (audit.unexplained_nanoton, audit.overcharges, audit.settled) == (100, 0, True)


def test_a_channel_running_low_is_topped_up_and_the_balance_figure_follows(proxy: Proxy,
                                                                             caplog: pytest.LogCaptureFixture
                                                                             ) -> None:
    """The client's background round: below `top_up_below_nanoton` left for new requests, the channel is topped up
    to `top_up_to_nanoton` (and said so in the log); at or above it, nothing happens."""
    cfg = ClientConfig(name="alice", state_dir=str(proxy.state), payments=True, proxy=ENDPOINT,
                       top_up_below_nanoton=10 * TON, top_up_to_nanoton=12 * TON, chain_poll_s=0.01)
    payments = ClientPayments(cfg, TLS_KEY)
    payments.open()
    try:
        assert payments.balance_nanoton == 10 * TON == cfg.deposit_nanoton
        caplog.set_level(logging.INFO, logger="cocoon.client.payments")
        payments._top_up()  # not below the threshold
        assert payments.balance_nanoton == 10 * TON and "topped up" not in caplog.text
        proxy.account = asyncio.run(proxy.billing.open_account(TLS_KEY, payments.client_params(ENDPOINT)))
        ticket = payments.begin(rid())
        end = proxy.settle(rid(), Usage(completion_tokens=50))
        ended(payments, ticket, end)
        assert payments.audit.settled and end.cost_nanoton > 0

        async def until_topped_up() -> None:  # the background round does it
            task = asyncio.create_task(payments.run())
            try:
                for _ in range(500):
                    if payments.balance_nanoton == 12 * TON:
                        return
                    await asyncio.sleep(0.01)
            finally:
                task.cancel()

        asyncio.run(until_topped_up())
        assert payments.balance_nanoton == 12 * TON and "topped up the payment channel" in caplog.text
    finally:
        payments.close()


def test_a_request_that_could_not_be_sent_leaves_nothing_in_doubt(proxy: Proxy) -> None:
    payments = proxy.client()
    in_doubt = vouchers_path(proxy.state, "alice").with_suffix(".in-doubt")
    assert in_doubt.exists()  # while it runs: a crash leaves it, and the next run knows charges may follow
    ticket = payments.begin(rid())
    payments.unsent(ticket)
    assert payments.audit.settled
    assert (payments.refused_vouchers, payments.superseded_vouchers, payments.overcharges) == (0, 0, 0)
    # a proxy this client has no channel with gets its wallet, and no channel to charge
    elsewhere = payments.client_params("127.0.0.1:9")
    assert (elsewhere.owner, elsewhere.channel, elsewhere.proof) == (payments.wallet.address, "", b"")
    assert payments.client_params(ENDPOINT).channel == payments.purses[ENDPOINT].channel
    payments.close()
    assert not in_doubt.exists()
    with pytest.raises(sqlite3.ProgrammingError):
        payments.vouchers.latest(payments.purses[ENDPOINT].channel, Tag.CHARGE)
    with pytest.raises(sqlite3.ProgrammingError):  # the receipts' book is closed too
        payments.receipts.charges(payments.purses[ENDPOINT].channel)


def test_a_disowned_answer_ends_its_request_and_is_not_counted_unseen(proxy: Proxy) -> None:
    """A sealed answer refused on the way (it did not open) ends its request at once: nothing stays in flight, and
    it is not an answer the proxy may have charged unseen; no charge for it is accepted."""
    payments = proxy.client()
    try:
        payments.disown(payments.begin(rid()))
        assert payments.audit.settled and payments.audit.unseen_answers == 0
    finally:
        payments.close()


def _voucher(seqno: int, amount: int) -> Voucher:
    return Voucher(int(Tag.CHARGE), 0, "ch", seqno, amount, b"")  # the audit trusts what payments verified


def test_the_first_voucher_of_a_fresh_channel_is_checked_too() -> None:
    audit = ChargeAudit(clock=lambda: 0.0)
    audit.open("ch", None, inherited_s=None)
    ticket = audit.begin("r1")
    audit.end(ticket, seen=True, channel="ch", cost=10, voucher=_voucher(1, 15))
    assert (audit.overcharges, audit.unexplained_nanoton) == (1, 5)


def test_an_earlier_runs_doubt_ends_with_the_first_voucher_of_a_channel_that_had_none() -> None:
    """An earlier run sent requests, saw none of their ends and kept no voucher: past their deadline, the first
    voucher, checked exactly, explains everything and nothing is left in doubt."""
    now = [0.0]
    audit = ChargeAudit(clock=lambda: now[0])
    audit.open("ch", None, inherited_s=10)
    assert not audit.settled
    now[0] = 11.0
    ticket = audit.begin("r1")
    audit.end(ticket, seen=True, channel="ch", cost=10, voucher=_voucher(1, 25))  # 15 of the earlier run's
    assert audit.settled and audit.overcharges == 0 and audit.unexplained_nanoton == 15


def test_answers_priced_at_the_prices_before_a_change_still_pass(proxy: Proxy) -> None:
    """Around a change of the root's prices, a proxy may settle at either the new ones or the ones before."""
    payments = proxy.client()
    try:
        old = proxy.prices()
        dearer = msgspec.structs.replace(old, price_per_token=old.price_per_token * 2)
        payments._refresh()  # no change yet
        assert payments._prices == (old,)
        payments.ledger.set_prices(dearer)
        payments._refresh()
        assert payments._prices == (dearer, old)
        usage = Usage(completion_tokens=40)
        for prices in (old, dearer):
            ticket = payments.begin(rid())
            ended(payments, ticket, ResponseError(call_id=0, status=502, message="broke", usage=usage,
                                               cost_nanoton=price_request(usage, prices, 1000).client_cost,
                                               coefficient=1000))
        assert payments.overcharges == 0
        ticket = payments.begin(rid())  # one nanoTON with no usage to show for it is one too many
        ended(payments, ticket, ResponseError(call_id=0, status=502, message="broke", cost_nanoton=1, coefficient=1000))
        assert (payments.overcharges, payments.overpriced_nanoton) == (1, 1)
    finally:
        payments.close()
    with pytest.raises(sqlite3.ProgrammingError):
        payments.ledger.balance(payments.wallet.address)


def test_a_run_after_one_that_stopped_mid_request_inherits_its_doubt_until_the_deadline(proxy: Proxy) -> None:
    crashed = proxy.client()  # never closed: its in-doubt marker stays
    cfg = ClientConfig(name="alice", state_dir=str(proxy.state), payments=True, proxy=ENDPOINT)
    payments = ClientPayments(cfg, TLS_KEY)
    assert payments.balance_nanoton == 0  # not read before open
    payments.open()
    try:
        channel = payments.purses[ENDPOINT].channel
        until = payments.audit._channels[channel].inherited_until
        assert until is not None
        left = until - time.monotonic()
        assert cfg.request_timeout_s + 29 < left <= cfg.request_timeout_s + 30
    finally:
        payments.close()
        crashed.close()


def test_an_answer_lost_after_a_voucher_arrived_cannot_excuse_that_voucher() -> None:
    """The request sent right after the voucher arrived (its ticket is the check's mark) cannot be in it: losing
    its answer leaves the voucher's excess an over-charge, not a charge some unseen answer may explain."""
    audit = ChargeAudit(clock=lambda: 0.0)
    audit.open("ch", None, inherited_s=None)
    a, b = audit.begin("a"), audit.begin("b")
    audit.end(a, seen=True, channel="ch", cost=10, voucher=_voucher(1, 15))  # waits for b
    c = audit.begin("c")
    audit.end(c, seen=False)
    audit.end(b, seen=True, channel="ch", cost=0)
    assert (audit.overcharges, audit.unexplained_nanoton, audit.unseen_answers) == (1, 5, 1)


def test_the_doubt_ends_at_the_first_exact_check_and_a_later_excess_is_an_overcharge() -> None:
    """An earlier run left doubt; past its deadline, voucher #1 explains every answer sent before it arrived (the
    answer to a request sent after it, carrying #2, is not among them), so it ends the doubt: #2's excess is then
    an over-charge, not a charge of the earlier run."""
    now = [0.0]
    audit = ChargeAudit(clock=lambda: now[0])
    audit.open("ch", None, inherited_s=10)
    now[0] = 11.0
    a, b = audit.begin("a"), audit.begin("b")
    audit.end(a, seen=True, channel="ch", cost=10, voucher=_voucher(1, 10))  # waits for b
    c = audit.begin("c")
    audit.end(c, seen=True, channel="ch", cost=5, voucher=_voucher(2, 20))  # 5 more than c's answer
    audit.end(b, seen=True, channel="ch", cost=0)
    assert (audit.overcharges, audit.unexplained_nanoton, audit.settled) == (1, 5, True)


def test_a_voucher_is_accepted_only_up_to_the_receipts_the_client_holds(proxy: Proxy) -> None:
    """Issue 11 item 2: two answers charged, one backed by a receipt and one whose receipt failed the client's check
    (or never came): the voucher covering both is explained only up to the first; the second's charge is an
    over-charge, and the receipt book keeps both charges, with the one receipt, for a dispute."""
    payments = proxy.client()
    try:
        backed = Flight("answered", Usage(completion_tokens=3))
        unbacked = Flight("answered", Usage(completion_tokens=9))
        for f in (backed, unbacked):
            f.ticket = payments.begin(f.request_id)
            settle(proxy, f)
        assert isinstance(backed.answer, ResponseEnd) and isinstance(unbacked.answer, ResponseEnd)
        ended(payments, backed.ticket, backed.answer)
        payments.end(unbacked.ticket, unbacked.answer, None, checked=True)
        cost = unbacked.answer.cost_nanoton
        assert cost > 0 and (payments.unbacked_answers, payments.unbacked_nanoton) == (1, cost)
        assert (payments.unexplained_nanoton, payments.overcharges) == (cost, 1)
        assert unbacked.answer.voucher is not None
        rows = {c.request_id: c for c in payments.receipts.charges(unbacked.answer.voucher.contract)}
        assert rows[unbacked.request_id].receipt is None and rows[unbacked.request_id].cost_nanoton == cost
        held = rows[backed.request_id].receipt
        assert held is not None and held.request_id == backed.request_id and held.verify().cost_nanoton > 0
        # the evidence for a dispute: the voucher, both charges, and exactly the unbacked one's cost contested
        (channel,) = dispute_evidence(payments.receipts, payments.vouchers)
        assert channel["contested_nanoton"] == channel["unbacked_nanoton"] == cost
        assert channel["voucher"]["amount_nanoton"] == payments.charged_nanoton
        assert {c["request_id"] for c in channel["charges"]} == {backed.request_id, unbacked.request_id}
        (only,) = dispute_evidence(payments.receipts, payments.vouchers, unbacked.request_id)[0]["charges"]
        assert only["request_id"] == unbacked.request_id and only["receipt"] is None
    finally:
        payments.close()


def test_a_caller_that_cannot_check_receipts_leaves_the_charge_to_the_other_checks(proxy: Proxy) -> None:
    """A relay pays for answers sealed to its devices: it sees no receipt it could check, and its charges are not
    contested for lacking one (the price and voucher checks still hold), nor kept as evidence."""
    payments = proxy.client()
    try:
        f = Flight("answered", Usage(completion_tokens=5))
        f.ticket = payments.begin(f.request_id)
        settle(proxy, f)
        assert isinstance(f.answer, ResponseEnd) and f.answer.voucher is not None
        payments.end(f.ticket, f.answer)
        assert (payments.unbacked_answers, payments.overcharges, payments.unexplained_nanoton) == (0, 0, 0)
        assert payments.receipts.charges(f.answer.voucher.contract) == []
    finally:
        payments.close()
