"""The proxy's books: one answer per request id, settled once with vouchers, reservations bounded by the stake,
charges bounded by the reservation, rollback checks."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from cocoon.config import Prices
from cocoon.core.usage import Usage
from cocoon.ledger.base import TON
from cocoon.ledger.books import CHECKS, DuplicateRequest, PaymentRequired, ProxyBooks, RolledBack
from cocoon.ledger.contracts import LOCAL_GLOBAL_ID, Tag
from cocoon.ledger.pricing import Bounds, max_cost, price_request
from cocoon.ledger.wallet import Wallet

KEY = Wallet(b"\x21" * 32)
PRICES = Prices()
CHANNEL = "0:" + "c1" * 32
WORKER_CHANNEL = "0:" + "d1" * 32
USAGE = Usage(prompt_tokens=1000, completion_tokens=500)
COST = price_request(USAGE, PRICES, 1000)


def books(path: Path, *, stake: int = TON, balance: int = 3 * TON, claimed: int = 0) -> ProxyBooks:
    b = ProxyBooks(path / "books.sqlite", KEY, LOCAL_GLOBAL_ID)
    b.set_client_channel("alice", CHANNEL, balance=balance, stake=stake, claimed=claimed, chain_seqno=0,
                         state="open")
    b.set_worker_channel("w1", WORKER_CHANNEL, redeemed=0)
    return b


def test_a_request_is_settled_once_with_cumulative_vouchers(tmp_path: Path) -> None:
    b = books(tmp_path)
    first = b.settle("req-1", "alice", "w1", "m", USAGE, PRICES, 1000)
    assert first.charge == COST and first.usage == USAGE and first.beyond == ()
    assert first.client_voucher is not None and first.worker_voucher is not None
    assert (first.client_voucher.tag, first.client_voucher.contract, first.client_voucher.seqno,
            first.client_voucher.amount) == (Tag.CHARGE, CHANNEL, 1, COST.client_cost)
    assert (first.worker_voucher.tag, first.worker_voucher.amount) == (Tag.PAYOUT, COST.worker_fee)
    first.client_voucher.verify(KEY.public_key, LOCAL_GLOBAL_ID)
    first.worker_voucher.verify(KEY.public_key, LOCAL_GLOBAL_ID)
    with pytest.raises(DuplicateRequest):
        b.settle("req-1", "alice", "w1", "m", Usage(completion_tokens=9999), PRICES, 1000)
    second = b.settle("req-2", "alice", "w1", "m", USAGE, PRICES, 1000)
    assert second.client_voucher is not None and second.worker_voucher is not None
    assert (second.client_voucher.seqno, second.client_voucher.amount) == (2, 2 * COST.client_cost)
    assert (second.worker_voucher.seqno, second.worker_voucher.amount) == (2, 2 * COST.worker_fee)
    s = b.summary()
    assert s["clients"]["alice"]["charged_nanoton"] == 2 * COST.client_cost
    assert s["workers"]["w1"]["earned_nanoton"] == 2 * COST.worker_fee
    assert s["commission_nanoton"] == 2 * COST.commission
    assert b.state()[0] == 2


def test_a_spot_checks_rerun_is_paid_to_its_worker_as_the_proxys_cost(tmp_path: Path) -> None:
    b = books(tmp_path)
    answered = b.settle("req-1", "alice", "w1", "m", USAGE, PRICES, 1000)
    bounds = Bounds(prompt_tokens=1000, completion_tokens=100)
    check = b.pay_check("req-1@w1", "w1", "m", USAGE, PRICES, 1000, bounds)
    held = Usage(prompt_tokens=1000, completion_tokens=100)  # a re-run is paid no more than the request can produce
    assert check.usage == held and check.beyond == ("completion_tokens",) and check.client_voucher is None
    fee = price_request(held, PRICES, 1000).worker_fee
    assert check.charge.client_cost == 0 and check.charge.worker_fee == fee > 0
    assert check.worker_voucher is not None and answered.worker_voucher is not None
    # the worker's cumulative payout voucher carries it, after the answer it was paid before
    assert (check.worker_voucher.seqno, check.worker_voucher.amount) == (2, COST.worker_fee + fee)
    check.worker_voucher.verify(KEY.public_key, LOCAL_GLOBAL_ID)
    with pytest.raises(DuplicateRequest):  # one payment per run
        b.pay_check("req-1@w1", "w1", "m", USAGE, PRICES, 1000)
    s = b.summary()
    assert CHECKS not in s["clients"] and s["clients"]["alice"]["charged_nanoton"] == COST.client_cost
    assert s["clients"]["alice"]["requests"] == 1  # the client's own request only
    assert (s["paid_nanoton"], s["checks_nanoton"]) == (COST.worker_fee + fee, fee)
    assert s["commission_nanoton"] == COST.client_cost - COST.worker_fee - fee  # the proxy bears it
    assert b.state()[0] == 2  # in the hash chain the proxy commits on chain, like every payout
    assert b.unclaimed() == [("alice", COST.client_cost, TON, "open")]  # nothing to claim from anyone for it


def test_reservations_are_bounded_by_the_stake_less_unclaimed_charges(tmp_path: Path) -> None:
    b = books(tmp_path, stake=TON, balance=3 * TON)
    assert b.available("alice") == TON  # not the balance: the client may withdraw down to its stake
    b.reserve("r1", "alice", 600_000_000)
    with pytest.raises(PaymentRequired, match=r"may cost up to 0\.500000000 TON; the client's channel covers "
                                              r"0\.400000000 TON more"):
        b.reserve("r2", "alice", 500_000_000)
    b.end("r1", "alice")
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
    with pytest.raises(DuplicateRequest):
        b.begin("r0", "alice")
    b.begin("r1", "alice")  # in flight when the proxy stopped, never settled: its client may ask again


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
    b = ProxyBooks(tmp_path / "books.sqlite", KEY, LOCAL_GLOBAL_ID)
    early = b.settle("r1", "bob", "w2", "m", USAGE, PRICES, 1000)
    assert early.client_voucher is None and early.worker_voucher is None
    b.set_worker_channel("w2", WORKER_CHANNEL, redeemed=0)
    later = b.settle("r2", "bob", "w2", "m", USAGE, PRICES, 1000)
    assert later.worker_voucher is not None and (later.worker_voucher.seqno, later.worker_voucher.amount) == \
        (1, 2 * COST.worker_fee)


def test_a_request_id_is_taken_until_its_request_ends_and_for_good_once_settled(tmp_path: Path) -> None:
    """Issue 15 item 1: one answer per (client, request id); ids are the client's own, so another client's equal
    id is a different request."""
    b = books(tmp_path)
    b.begin("r1", "alice")
    with pytest.raises(DuplicateRequest, match="request id `r1` was used before by this client"):
        b.begin("r1", "alice")  # in flight
    b.begin("r1", "bob")
    b.end("r1", "alice")  # ended without an answer (an error before the first token): nothing was charged
    b.begin("r1", "alice")
    b.settle("r1", "alice", "w1", "m", USAGE, PRICES, 1000)
    b.end("r1", "alice")
    with pytest.raises(DuplicateRequest):
        b.begin("r1", "alice")  # settled
    b.settle("r1", "bob", "w1", "m", USAGE, PRICES, 1000)
    assert b.summary()["clients"]["alice"]["requests"] == b.summary()["clients"]["bob"]["requests"] == 1


def test_a_charge_is_held_to_the_bounds_and_never_above_the_reservation(tmp_path: Path) -> None:
    """Issue 15 item 2: a report beyond the bounds is charged at the bound; even a dearer coefficient than the one
    reserved for cannot charge more than the reservation."""
    b = books(tmp_path)
    bounds = Bounds(prompt_tokens=300, completion_tokens=20)
    reserved = max_cost(bounds, PRICES, 1000)
    b.begin("r1", "alice")
    b.reserve("r1", "alice", reserved)
    absurd = Usage(prompt_tokens=50_000_000, completion_tokens=7)
    settled = b.settle("r1", "alice", "w1", "m", absurd, PRICES, 1000, bounds)
    assert settled.usage == Usage(prompt_tokens=300, completion_tokens=7) and settled.beyond == ("prompt_tokens",)
    assert settled.charge == price_request(settled.usage, PRICES, 1000)
    assert b.summary()["clients"]["alice"]["tokens"] == 307
    b.begin("r2", "alice")
    b.reserve("r2", "alice", reserved)
    dear = b.settle("r2", "alice", "w1", "m", Usage(prompt_tokens=300, completion_tokens=20), PRICES, 5000, bounds)
    assert dear.charge.client_cost == reserved and dear.charge.worker_fee <= reserved
    assert b.available("alice") == TON - settled.charge.client_cost - reserved


def test_books_from_before_ids_were_kept_per_client_are_migrated(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "books.sqlite")
    db.execute("CREATE TABLE requests (request_id TEXT PRIMARY KEY, seqno INTEGER NOT NULL UNIQUE, state_hash BLOB "
               "NOT NULL, ts REAL NOT NULL, client TEXT NOT NULL, worker TEXT NOT NULL, model TEXT NOT NULL, "
               "coefficient INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, "
               "completion_tokens INTEGER NOT NULL, reasoning_tokens INTEGER NOT NULL, client_cost INTEGER NOT NULL, "
               "worker_fee INTEGER NOT NULL)")
    db.execute("INSERT INTO requests VALUES ('k:r1', 1, x'00', 0, 'alice', 'w1', 'm', 1000, 1, 0, 1, 0, 5, 4)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value)")
    db.execute("INSERT INTO meta VALUES ('seqno', 1), ('state_hash', x'00')")
    db.commit()
    db.close()
    b = books(tmp_path)
    with pytest.raises(DuplicateRequest):
        b.begin("k:r1", "alice")
    b.settle("k:r1", "bob", "w1", "m", USAGE, PRICES, 1000)  # the same id for another client is another request


def test_ending_one_request_releases_its_reservation_only(tmp_path: Path) -> None:
    """Two holds of one client: ending one must leave the other held, or the client gets credit beyond its stake."""
    b = books(tmp_path, stake=TON)
    b.begin("r1", "alice")
    b.begin("r2", "alice")
    b.reserve("r1", "alice", TON // 4)
    b.reserve("r2", "alice", TON // 2)
    with pytest.raises(DuplicateRequest, match="holds a reservation already"):
        b.reserve("r2", "alice", 1)
    assert b.summary()["clients"]["alice"]["reserved_nanoton"] == 3 * TON // 4
    b.end("r1", "alice")
    assert b.available("alice") == TON // 2
    assert b.summary()["clients"]["alice"]["reserved_nanoton"] == TON // 2
    with pytest.raises(PaymentRequired):
        b.reserve("r3", "alice", TON // 2 + 1)
    b.reserve("r3", "alice", TON // 2)  # exactly what is left
    assert b.available("alice") == 0
    b.end("r2", "alice")
    b.end("r3", "alice")
    assert b.available("alice") == TON and b.summary()["clients"]["alice"]["reserved_nanoton"] == 0


def test_books_with_other_content_at_the_committed_seqno_refuse(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = books(tmp_path / "a"), books(tmp_path / "b")
    a.settle("req-1", "alice", "w1", "m", USAGE, PRICES, 1000)
    b.settle("req-1", "alice", "w1", "m", Usage(prompt_tokens=1000, completion_tokens=501), PRICES, 1000)
    assert a.state()[0] == b.state()[0] == 1
    a.check_commit(*a.state())
    with pytest.raises(RolledBack, match="differs from the one committed on chain"):
        b.check_commit(*a.state())


def test_the_latest_charge_voucher_is_what_the_proxy_claims(tmp_path: Path) -> None:
    b = books(tmp_path)
    assert b.client_voucher("alice") is None  # nothing charged yet
    b.set_client_channel("bob", "", balance=0, stake=0, claimed=0, chain_seqno=0, state="new")
    b.settle("req-0", "bob", "w1", "m", USAGE, PRICES, 1000)
    assert b.client_voucher("bob") is None and b.client_voucher("carol") is None  # no channel, no voucher
    b.settle("req-1", "alice", "w1", "m", USAGE, PRICES, 1000)
    settled = b.settle("req-2", "alice", "w1", "m", USAGE, PRICES, 1000)
    assert b.client_voucher("alice") == settled.client_voucher
    with pytest.raises(dataclasses.FrozenInstanceError):
        settled.charge = COST  # type: ignore[misc]


def test_the_state_is_synced_in_full_before_it_is_committed(tmp_path: Path) -> None:
    b = books(tmp_path)
    b.settle("req-1", "alice", "w1", "m", USAGE, PRICES, 1000)
    statements: list[str] = []
    b._db.set_trace_callback(statements.append)
    assert b.durable() == b.state()
    b._db.set_trace_callback(None)
    # a write while synchronous=FULL syncs the write-ahead log, and every commit before it; then back to NORMAL
    assert [s.split(" WHERE")[0] for s in statements[:3]] == [
        "PRAGMA synchronous=FULL", "UPDATE meta SET value = value", "PRAGMA synchronous=NORMAL"]
    assert b._db.execute("PRAGMA synchronous").fetchone() == (1,)
