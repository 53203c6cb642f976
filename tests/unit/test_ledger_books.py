"""The proxy's books: idempotent settlement with vouchers, reservations bounded by the stake, rollback checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cocoon.config import Prices
from cocoon.core.usage import Usage
from cocoon.ledger.base import TON
from cocoon.ledger.books import PaymentRequired, ProxyBooks, RolledBack
from cocoon.ledger.contracts import Tag
from cocoon.ledger.pricing import price_request
from cocoon.ledger.wallet import Wallet

KEY = Wallet(b"\x21" * 32)
PRICES = Prices()
CHANNEL = "0:" + "c1" * 32
WORKER_CHANNEL = "0:" + "d1" * 32
USAGE = Usage(prompt_tokens=1000, completion_tokens=500)
COST = price_request(USAGE, PRICES, 1000)


def books(path: Path, *, stake: int = TON, balance: int = 3 * TON, claimed: int = 0) -> ProxyBooks:
    b = ProxyBooks(path / "books.sqlite", KEY)
    b.set_client_channel("alice", CHANNEL, balance=balance, stake=stake, claimed=claimed, chain_seqno=0,
                         state="open")
    b.set_worker_channel("w1", WORKER_CHANNEL, redeemed=0)
    return b


def test_a_request_is_settled_once_with_cumulative_vouchers(tmp_path: Path) -> None:
    b = books(tmp_path)
    first = b.settle("req-1", "alice", "w1", "m", USAGE, PRICES, 1000)
    assert first.charge == COST and not first.duplicate
    assert first.client_voucher is not None and first.worker_voucher is not None
    assert (first.client_voucher.tag, first.client_voucher.contract, first.client_voucher.seqno,
            first.client_voucher.amount) == (Tag.CHARGE, CHANNEL, 1, COST.client_cost)
    assert (first.worker_voucher.tag, first.worker_voucher.amount) == (Tag.PAYOUT, COST.worker_fee)
    first.client_voucher.verify(KEY.public_key)
    first.worker_voucher.verify(KEY.public_key)
    again = b.settle("req-1", "alice", "w1", "m", Usage(completion_tokens=9999), PRICES, 1000)
    assert again.duplicate and again.charge == COST and again.client_voucher == first.client_voucher
    second = b.settle("req-2", "alice", "w1", "m", USAGE, PRICES, 1000)
    assert second.client_voucher is not None and second.worker_voucher is not None
    assert (second.client_voucher.seqno, second.client_voucher.amount) == (2, 2 * COST.client_cost)
    assert (second.worker_voucher.seqno, second.worker_voucher.amount) == (2, 2 * COST.worker_fee)
    s = b.summary()
    assert s["clients"]["alice"]["charged_nanoton"] == 2 * COST.client_cost
    assert s["workers"]["w1"]["earned_nanoton"] == 2 * COST.worker_fee
    assert s["commission_nanoton"] == 2 * COST.commission
    assert b.state()[0] == 2


def test_reservations_are_bounded_by_the_stake_less_unclaimed_charges(tmp_path: Path) -> None:
    b = books(tmp_path, stake=TON, balance=3 * TON)
    assert b.available("alice") == TON  # not the balance: the client may withdraw down to its stake
    b.reserve("r1", "alice", 600_000_000)
    with pytest.raises(PaymentRequired, match=r"may cost up to 0\.500000000 TON; the client's channel covers "
                                              r"0\.400000000 TON more"):
        b.reserve("r2", "alice", 500_000_000)
    b.release("r1")
    b.reserve("r2", "alice", 500_000_000)
    b.settle("r2", "alice", "w1", "m", USAGE, PRICES, 1000)  # settling releases the reservation
    assert b.available("alice") == TON - COST.client_cost
    b.set_client_channel("alice", CHANNEL, balance=3 * TON - COST.client_cost, stake=TON,
                         claimed=COST.client_cost, chain_seqno=1, state="open")  # claimed on chain
    assert b.available("alice") == TON
    assert b.available("nobody") == 0
    b.set_client_channel("alice", CHANNEL, balance=TON, stake=TON, claimed=COST.client_cost, chain_seqno=1,
                         state="closing")  # closing: nothing more on credit
    with pytest.raises(PaymentRequired):
        b.reserve("r3", "alice", 1)


def test_reservations_do_not_survive_a_restart_but_settlements_do(tmp_path: Path) -> None:
    b = books(tmp_path)
    b.reserve("r1", "alice", TON // 2)
    b.settle("r0", "alice", "w1", "m", USAGE, PRICES, 1000)
    b.close()
    b = books(tmp_path)
    assert b.available("alice") == TON - COST.client_cost
    assert b.settle("r0", "alice", "w1", "m", USAGE, PRICES, 1000).duplicate


def test_books_behind_or_beside_the_committed_state_refuse(tmp_path: Path) -> None:
    b = books(tmp_path)
    for i in range(3):
        b.settle(f"r{i}", "alice", "w1", "m", USAGE, PRICES, 1000)
    seqno, state_hash = b.durable()
    b.check_commit(0, bytes(32))
    b.check_commit(seqno, state_hash)
    b.close()
    backup = tmp_path / "backup"
    backup.mkdir()
    shutil.copy(tmp_path / "books.sqlite", backup / "books.sqlite")
    b = books(tmp_path)
    b.settle("r3", "alice", "w1", "m", USAGE, PRICES, 1000)
    committed = b.durable()
    b.check_commit(seqno, state_hash)  # newer books contain the older commit
    old = books(backup)
    with pytest.raises(RolledBack, match="the books are at seqno 3 but this proxy committed seqno 4 on chain"):
        old.check_commit(*committed)
    with pytest.raises(RolledBack, match="differs from the one committed on chain"):
        b.check_commit(seqno, bytes(32))


def test_charges_without_a_channel_accrue_and_the_first_voucher_covers_them(tmp_path: Path) -> None:
    b = ProxyBooks(tmp_path / "books.sqlite", KEY)
    early = b.settle("r1", "bob", "w2", "m", USAGE, PRICES, 1000)
    assert early.client_voucher is None and early.worker_voucher is None
    b.set_worker_channel("w2", WORKER_CHANNEL, redeemed=0)
    later = b.settle("r2", "bob", "w2", "m", USAGE, PRICES, 1000)
    assert later.worker_voucher is not None and (later.worker_voucher.seqno, later.worker_voucher.amount) == \
        (1, 2 * COST.worker_fee)
