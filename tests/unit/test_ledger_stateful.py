"""Money is never lost or invented: random deposits, requests, withdrawals, claims, redeems, commits, closes,
restarts and crashes against the local chain, the proxy's books and the clients' and workers' voucher books.

After every step:
- every coin minted is in a wallet, on a contract, or paid as a fee (the chain's audit);
- no client's channel was charged beyond the latest voucher it holds, which is exactly what its answers cost;
- each worker's earnings in the books equal the fees of its settled requests, and its voucher says the same;
- the proxy's commission is the difference between what clients were charged and what workers earned;
- the proxy never extends a client more credit than the chain lets it claim.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from cocoon.config import Prices
from cocoon.core.usage import Usage
from cocoon.ledger.base import TON, LedgerRefused, Terms
from cocoon.ledger.books import BooksError, DuplicateRequest, PaymentRequired, ProxyBooks
from cocoon.ledger.local import LocalLedger
from cocoon.ledger.pricing import Bounds, max_cost, price_request
from cocoon.ledger.purse import ChannelPolicy, ClientPurse, WorkerPurse
from cocoon.ledger.settlement import ProxySettlement, SettlementPolicy
from cocoon.ledger.vouchers import VoucherBook
from cocoon.ledger.wallet import Wallet

# dear tokens, so that stakes run out and claims, refusals and top-ups all happen within a few steps
PRICES = Prices(price_per_token=40_000, worker_fee_per_token=28_000)
TERMS = Terms(client_close_delay=600, min_client_stake=TON, min_proxy_stake=TON)
CLIENTS, WORKERS = ("c0", "c1"), ("w0", "w1")
COEFFICIENTS = {"w0": 1000, "w1": 1500}


class FlakyKey(Wallet):
    """The proxy's voucher key; armed, its next signature fails: a crash in the middle of a settlement."""

    armed = False

    def sign(self, data: bytes) -> bytes:
        if self.armed:
            self.armed = False
            raise BooksError("simulated crash while settling")
        return super().sign(data)


class Money(RuleBasedStateMachine):
    @initialize(claim=st.sampled_from([TON // 10, TON // 2, 5 * TON]))
    def start(self, claim: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cocoon-money-"))
        self.clock = [1_800_000_000.0]
        self.policy = SettlementPolicy(client_claim_nanoton=claim)
        ledger = LocalLedger(self.dir / "chain.sqlite", default_prices=PRICES, terms=TERMS,
                             clock=lambda: self.clock[0])
        self.key = FlakyKey(b"\x30" * 32)
        self.operator = Wallet(b"\x31" * 32)
        self.wallets = {name: Wallet(bytes([0x40 + i]) * 32) for i, name in enumerate(CLIENTS + WORKERS)}
        for w in [self.operator, *self.wallets.values()]:
            ledger.fund(w, 1000 * TON)
        self.proxy = ledger.register_proxy(self.operator.address, self.key.public_key, "127.0.0.1:1")
        ledger.add_proxy_stake(self.operator, self.proxy, 5 * TON)
        self.costs: dict[str, int] = {}  # per channel: what its answers cost, by the client's own count
        self.fees = dict.fromkeys(WORKERS, 0)
        self.nonces = dict.fromkeys(CLIENTS, 0)
        self.requests = self.settled = self.refused = 0
        self.open_all(ledger)
        for c in CLIENTS:
            self.open_channel(c)

    def open_channel(self, client: str) -> None:
        purse = self.purses[client]
        purse.ensure_open()
        self.costs[purse.channel] = 0
        self.sync(client)

    def sync(self, client: str) -> None:
        """The proxy reads the client's channel; its books know clients by channel (their money's identity)."""
        channel = self.purses[client].channel
        self.settlement.sync_client(channel, channel)

    def open_all(self, ledger: LocalLedger | None = None) -> None:
        """(Re)open every party's files, as processes do when they start."""
        self.ledger = ledger or LocalLedger(self.dir / "chain.sqlite", clock=lambda: self.clock[0])
        self.books = ProxyBooks(self.dir / "proxy-books.sqlite", self.key, self.ledger.global_id())
        self.settlement = ProxySettlement(self.ledger, self.books, self.operator, self.proxy, self.policy)
        self.settlement.check_rollback()
        self.purses = {c: self.purse(c) for c in CLIENTS}
        self.workers = {w: WorkerPurse(self.ledger, self.wallets[w], self.proxy,
                                       VoucherBook(self.dir / f"{w}.sqlite"), redeem_threshold=TON // 2)
                        for w in WORKERS}
        for c in CLIENTS:
            self.sync(c)
        for w in WORKERS:
            self.settlement.sync_worker(w, self.wallets[w].address)

    def purse(self, client: str) -> ClientPurse:
        return ClientPurse(self.ledger, self.wallets[client], self.proxy, VoucherBook(self.dir / f"{client}.sqlite"),
                           ChannelPolicy(deposit=3 * TON, stake=TON, top_up_below=TON, top_up_to=3 * TON),
                           nonce=self.nonces[client])

    def close_all(self) -> None:
        self.ledger.close()
        self.books.close()
        for p in [*self.purses.values(), *self.workers.values()]:
            p.vouchers.close()

    def teardown(self) -> None:
        if hasattr(self, "dir"):
            event(f"settled {min(self.settled, 10)}+ requests, refused {min(self.refused, 3)}+")

            self.close_all()
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- rules ----
    @rule(client=st.sampled_from(CLIENTS), worker=st.sampled_from(WORKERS), prompt=st.integers(0, 3000),
          completion=st.integers(0, 3000), used=st.floats(0, 1), times=st.integers(1, 4))
    def requests_(self, client: str, worker: str, prompt: int, completion: int, used: float, times: int) -> None:
        for _ in range(times):
            self.request(client, worker, prompt, completion, used)

    def request(self, client: str, worker: str, prompt: int, completion: int, used: float) -> None:
        self.requests += 1
        rid = f"req-{self.requests}"
        coefficient = COEFFICIENTS[worker]
        reserve = max_cost(Bounds(prompt, completion), PRICES, coefficient)
        channel = self.purses[client].channel
        try:
            self.books.reserve(rid, channel, reserve)
        except PaymentRequired:
            assert self.books.available(channel) < reserve
            self.refused += 1
            return
        usage = Usage(prompt_tokens=prompt, completion_tokens=int(completion * used))
        settled = self.books.settle(rid, channel, worker, "m", usage, PRICES, coefficient)
        assert settled.charge == price_request(usage, PRICES, coefficient)
        assert settled.charge.client_cost <= reserve
        if settled.client_voucher is not None:  # each voucher adds exactly its answer's cost
            before = self.purses[client].charged
            assert self.purses[client].keep(settled.client_voucher)  # the newest
            assert self.purses[client].charged - before == settled.charge.client_cost
        if settled.worker_voucher is not None:
            assert self.workers[worker].accept(settled.worker_voucher, settled.charge.worker_fee) == 0
        self.settled += 1
        self.costs[channel] += settled.charge.client_cost
        self.fees[worker] += settled.charge.worker_fee
        with pytest.raises(DuplicateRequest):
            self.books.settle(rid, channel, worker, "m", usage, PRICES, coefficient)

    @rule(client=st.sampled_from(CLIENTS), worker=st.sampled_from(WORKERS))
    def crash_while_settling(self, client: str, worker: str) -> None:
        self.requests += 1
        self.key.armed = True
        try:
            self.books.settle(f"req-{self.requests}", self.purses[client].channel, worker, "m",
                              Usage(completion_tokens=100), PRICES, 1000)
        except BooksError:
            pass  # nothing of it may remain: the invariants check
        self.key.armed = False

    @rule(client=st.sampled_from(CLIENTS), amount=st.integers(1, 3 * TON))
    def deposit(self, client: str, amount: int) -> None:
        self._chain_op(client, lambda: self.ledger.deposit(self.wallets[client], self.purses[client].channel, amount))

    @rule(client=st.sampled_from(CLIENTS))
    def top_up(self, client: str) -> None:
        self._chain_op(client, self.purses[client].top_up_if_low)

    @rule(client=st.sampled_from(CLIENTS), amount=st.integers(1, 3 * TON))
    def withdraw(self, client: str, amount: int) -> None:
        self._chain_op(client, lambda: self.ledger.withdraw(self.wallets[client], self.purses[client].channel,
                                                            amount))

    @rule(client=st.sampled_from(CLIENTS))
    def request_close(self, client: str) -> None:
        self._chain_op(client, lambda: self.ledger.request_close(self.wallets[client], self.purses[client].channel))

    @rule(client=st.sampled_from(CLIENTS), proxy_watches=st.booleans())
    def finalize_close(self, client: str, proxy_watches: bool) -> None:
        if proxy_watches:  # a proxy that is up claims a closing channel's charges before the delay ends
            self.settlement.claim_due()
        self.clock[0] += TERMS.client_close_delay
        self._chain_op(client, lambda: self.ledger.finalize_close(self.wallets[client],
                                                                  self.purses[client].channel))

    @rule(client=st.sampled_from(CLIENTS))
    def reopen(self, client: str) -> None:
        """A client whose channel closed opens a new one (the next nonce)."""
        if self.ledger.channel_state(self.purses[client].channel).state != "closed":
            return
        self.nonces[client] += 1
        self.purses[client].vouchers.close()
        self.purses[client] = self.purse(client)
        self.open_channel(client)
        event("channel reopened")

    @rule()
    def claim(self) -> None:
        if self.settlement.claim_due():
            event("charges claimed on chain")

    @rule(worker=st.sampled_from(WORKERS), force=st.booleans())
    def redeem(self, worker: str, force: bool) -> None:
        try:
            if self.workers[worker].redeem_if_due(force=force):
                event("redeemed")
        except LedgerRefused as exc:
            assert exc.exit_code == 112  # the proxy's funds ran out: the worker keeps its voucher
            event("redeem refused: no funds")
        self.settlement.sync_worker(worker, self.wallets[worker].address)

    @rule()
    def commit(self) -> None:
        self.settlement.commit_due()

    @rule()
    def restart(self) -> None:
        self.close_all()
        self.open_all()

    @rule()
    def crash(self) -> None:
        # the processes die without closing anything; SQLite has what was committed
        self.open_all()

    def _chain_op(self, client: str, op: object) -> None:
        try:
            op()  # type: ignore[operator]
        except LedgerRefused as exc:  # closed channel, below the stake...: fees paid, nothing else
            event(f"chain refused: {exc.exit_code}")
        self.sync(client)

    # ---- invariants ----
    @invariant()
    def coins_are_conserved(self) -> None:
        if hasattr(self, "ledger"):
            assert self.ledger.chain.audit().balanced

    @invariant()
    def clients_pay_at_most_their_vouchers_which_are_what_their_answers_cost(self) -> None:
        if not hasattr(self, "purses"):
            return
        for purse in self.purses.values():
            assert purse.charged == self.costs[purse.channel]
            assert self.ledger.channel_state(purse.channel).charged <= purse.charged

    @invariant()
    def workers_earn_their_requests_fees_and_the_proxy_keeps_the_difference(self) -> None:
        if not hasattr(self, "books"):
            return
        summary = self.books.summary()
        for w, purse in self.workers.items():
            assert summary["workers"].get(w, {}).get("earned_nanoton", 0) == self.fees[w] == purse.earned
            assert purse.redeemed() <= purse.earned
        assert summary["charged_nanoton"] == sum(self.costs.values())
        assert summary["commission_nanoton"] == sum(self.costs.values()) - sum(self.fees.values())

    @invariant()
    def credit_never_exceeds_what_the_chain_lets_the_proxy_claim(self) -> None:
        if not hasattr(self, "books"):
            return
        for purse in self.purses.values():
            state = self.ledger.channel_state(purse.channel)
            if state.state == "open":
                assert self.costs[purse.channel] - state.charged <= state.balance


Money.TestCase.settings = settings(max_examples=12, stateful_step_count=25, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow])
test_money = Money.TestCase
