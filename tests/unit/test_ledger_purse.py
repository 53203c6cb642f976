"""The client's and the worker's purses on a real local chain: which channel a client uses, what it still holds,
when it tops up, what a worker is owed and when it redeems."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cocoon.config import Prices
from cocoon.ledger.base import TON, Terms
from cocoon.ledger.contracts import Tag
from cocoon.ledger.local import LocalLedger
from cocoon.ledger.purse import ChannelPolicy, ClientPurse, WorkerPurse
from cocoon.ledger.vouchers import VoucherBook, VoucherError, sign_voucher
from cocoon.ledger.wallet import Wallet

KEY = Wallet(b"\x21" * 32)  # the proxy's voucher key
OPERATOR = Wallet(b"\x31" * 32)
CLIENT = Wallet(b"\x41" * 32)
WORKER = Wallet(b"\x51" * 32)
POLICY = ChannelPolicy(deposit=3 * TON, stake=2 * TON, top_up_below=2 * TON, top_up_to=4 * TON)


@dataclass
class Chain:
    ledger: LocalLedger
    proxy: str
    dir: Path
    clock: list[float]

    def sign(self, tag: Tag, contract: str, seqno: int, amount: int) -> object:
        return sign_voucher(KEY, tag, contract, seqno, amount, global_id=self.ledger.global_id())

    def client(self, **kw: object) -> ClientPurse:
        return ClientPurse(self.ledger, CLIENT, self.proxy, VoucherBook(self.dir / "client.sqlite"),
                           **{"policy": POLICY, **kw})  # type: ignore[arg-type]

    def worker(self, threshold: int = TON) -> WorkerPurse:
        return WorkerPurse(self.ledger, WORKER, self.proxy, VoucherBook(self.dir / "worker.sqlite"),
                           redeem_threshold=threshold)


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    clock = [1_700_000_000.0]
    ledger = LocalLedger(tmp_path / "chain.sqlite", default_prices=Prices(), terms=Terms(), clock=lambda: clock[0])
    for wallet in (OPERATOR, CLIENT, WORKER):
        ledger.fund(wallet, 100 * TON)
    proxy = ledger.register_proxy(OPERATOR.address, KEY.public_key, "127.0.0.1:1")
    ledger.add_proxy_stake(OPERATOR, proxy, ledger.root_params().terms.min_proxy_stake)
    yield Chain(ledger, proxy, tmp_path, clock)
    ledger.close()


def test_a_client_uses_its_first_channel_that_is_not_closed(chain: Chain) -> None:
    first = chain.client()
    assert (first.nonce, first.channel) == (0, chain.ledger.client_channel_address(chain.proxy, CLIENT.address, 0))
    first.ensure_open()
    chain.ledger.request_close(CLIENT, first.channel)
    chain.clock[0] += Terms().client_close_delay + 1
    chain.ledger.finalize_close(CLIENT, first.channel)
    second = chain.client()
    assert (second.nonce, second.channel) == (1, chain.ledger.client_channel_address(chain.proxy, CLIENT.address, 1))


def test_a_purse_without_a_policy_reads_its_channel_but_never_opens_or_tops_it_up(chain: Chain) -> None:
    reader = chain.client(policy=None)
    assert reader.state().state == "new" and reader.remaining() == 0
    with pytest.raises(ValueError, match="no channel policy"):
        reader.ensure_open()
    chain.client().ensure_open()
    with pytest.raises(ValueError, match="no channel policy"):
        reader.top_up_if_low()
    with pytest.raises(AttributeError):
        POLICY.deposit = 0  # type: ignore[misc]


def test_what_a_channel_holds_for_new_requests_is_its_balance_less_unclaimed_charges(chain: Chain) -> None:
    purse = chain.client()
    assert purse.top_up_if_low() is None and purse.state().state == "new"  # nothing to top up before it opens
    purse.ensure_open()
    assert purse.remaining() == 3 * TON
    voucher = chain.sign(Tag.CHARGE, purse.channel, 1, TON // 2)
    assert purse.keep(voucher) is True
    assert (purse.charged, purse.remaining()) == (TON // 2, 3 * TON - TON // 2)
    chain.ledger.settle_charge(OPERATOR, voucher)  # claimed on chain: the balance drops, nothing is unclaimed
    state = purse.state()
    assert (state.charged, state.balance) == (TON // 2, 3 * TON - TON // 2)
    assert purse.remaining() == 3 * TON - TON // 2
    with pytest.raises(VoucherError, match="expected a charge voucher"):
        purse.keep(chain.sign(Tag.PAYOUT, purse.channel, 2, TON))


def test_a_top_up_raises_no_stake_when_none_was_claimed(chain: Chain) -> None:
    purse = chain.client()
    purse.ensure_open()
    purse.keep(chain.sign(Tag.CHARGE, purse.channel, 1, 3 * TON // 2))  # unclaimed: the stake is whole
    assert purse.top_up_if_low() is not None
    assert (purse.remaining(), purse.state().stake) == (POLICY.top_up_to, POLICY.stake)


def test_a_channel_is_topped_up_below_its_threshold_only_and_its_stake_restored(chain: Chain) -> None:
    purse = chain.client()
    purse.ensure_open()
    purse.keep(chain.sign(Tag.CHARGE, purse.channel, 1, TON))
    assert purse.remaining() == 2 * TON == POLICY.top_up_below
    assert purse.top_up_if_low() is None  # not below
    claim = chain.sign(Tag.CHARGE, purse.channel, 2, 2 * TON)
    purse.keep(claim)
    chain.ledger.settle_charge(OPERATOR, claim)  # 1 TON left, under the 2 TON stake: the claim took stake
    before = purse.state()
    assert before.stake < POLICY.stake and purse.remaining() == TON
    assert purse.top_up_if_low() is not None
    after = purse.state()
    assert purse.remaining() == POLICY.top_up_to and after.stake == POLICY.stake
    assert purse.top_up_if_low() is None
    assert purse.state().stake == POLICY.stake  # no stake raised when none is missing


def test_a_worker_sees_payouts_whose_notice_was_lost_and_redeems_at_its_threshold(chain: Chain) -> None:
    worker = chain.worker(threshold=TON)
    channel = worker.channel
    assert worker.redeem_if_due(force=True) is None  # no voucher yet
    assert worker.accept(chain.sign(Tag.PAYOUT, channel, 1, TON // 4), TON // 4) == 0
    # voucher #2 never arrived: #3 covers its fee too
    assert worker.accept(chain.sign(Tag.PAYOUT, channel, 3, TON), TON // 4) == TON // 2
    with pytest.raises(VoucherError, match="expected a payout voucher"):
        worker.accept(chain.sign(Tag.CHARGE, channel, 4, 2 * TON), 0)
    assert (worker.earned, worker.redeemed()) == (TON, 0)
    assert worker.redeem_if_due() is not None  # exactly the threshold unredeemed
    assert worker.redeemed() == TON
    assert worker.redeem_if_due(force=True) is None  # nothing left to redeem
    worker.accept(chain.sign(Tag.PAYOUT, channel, 4, TON + 1), 1)
    assert worker.redeem_if_due() is None  # 1 nanoTON is below the threshold
    assert worker.redeem_if_due(force=True) is not None
    assert worker.redeemed() == TON + 1
