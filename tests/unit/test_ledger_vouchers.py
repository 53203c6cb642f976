"""Vouchers: the exact signature the contracts verify, bound to one network, and books that only ever accept a
newer one."""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

import pytest

from cocoon.ledger.contracts import LOCAL_GLOBAL_ID, MAINNET_GLOBAL_ID, TESTNET_GLOBAL_ID, Op, Tag
from cocoon.ledger.vouchers import Voucher, VoucherBook, VoucherError, sign_voucher, ton
from tests.unit.ledger_vectors import SANDBOX_GLOBAL_ID, contract_addresses, message, sandbox_key, steps

KEY = sandbox_key("proxy")
GID = SANDBOX_GLOBAL_ID  # the recorded vectors' network
sign = functools.partial(sign_voucher, global_id=GID)


@pytest.mark.parametrize("step,tag,op", [("channel.charge", Tag.CHARGE, Op.CHARGE),
                                         ("worker.redeem", Tag.PAYOUT, Op.REDEEM)])
def test_signatures_are_byte_for_byte_the_ones_the_contracts_accepted(step: str, tag: Tag, op: Op) -> None:
    first = dict(steps())[step][0]
    s = message(first["in_msg"]).body.begin_parse()  # the message as recorded; its body holds the voucher
    assert s.load_uint(32) == op
    s.load_uint(64)
    seqno, amount, signature = s.load_uint(64), s.load_coins(), s.load_bytes(64)
    ours = sign(KEY, tag, first["address"], seqno, amount)
    assert ours.signature == signature
    ours.verify(KEY.public_key, GID)


def test_a_voucher_signed_by_another_key_or_for_another_tag_does_not_verify() -> None:
    channel = contract_addresses()["client_channel"]
    v = sign(KEY, Tag.CHARGE, channel, 1, 10**9)
    with pytest.raises(VoucherError, match=r"charge voucher #1 for 1\.000000000 TON on 0:.*not the proxy's"):
        v.verify(sandbox_key("client").public_key, GID)
    with pytest.raises(VoucherError, match="final voucher #1"):
        Voucher(int(Tag.FINAL), GID, v.contract, v.seqno, v.amount, v.signature).verify(KEY.public_key, GID)


def test_item_7_a_voucher_signed_for_another_network_is_refused() -> None:
    """Issue 15 item 7: a voucher signed on a test network must be worthless on the main one (same keys, same
    addresses). The global id is part of what is signed, and a verifier compares it with its own network's."""
    channel = contract_addresses()["client_channel"]
    for_testnet = sign_voucher(KEY, Tag.CHARGE, channel, 1, 10**9, global_id=TESTNET_GLOBAL_ID)
    for_testnet.verify(KEY.public_key, TESTNET_GLOBAL_ID)  # valid where it was meant to be
    for network in (MAINNET_GLOBAL_ID, LOCAL_GLOBAL_ID):
        with pytest.raises(VoucherError, match=f"signed for the network with global id -3; this network's is "
                                               f"{network}"):
            for_testnet.verify(KEY.public_key, network)
    # relabelling it does not help: the id is under the signature
    relabelled = Voucher(for_testnet.tag, MAINNET_GLOBAL_ID, for_testnet.contract, for_testnet.seqno,
                         for_testnet.amount, for_testnet.signature)
    with pytest.raises(VoucherError, match="not the proxy's"):
        relabelled.verify(KEY.public_key, MAINNET_GLOBAL_ID)
    assert for_testnet.signed_hash() != sign_voucher(KEY, Tag.CHARGE, channel, 1, 10**9,
                                                     global_id=MAINNET_GLOBAL_ID).signed_hash()


def test_the_book_keeps_only_strictly_newer_vouchers_of_its_network_across_restarts(tmp_path: Path) -> None:
    channel = contract_addresses()["client_channel"]
    book = VoucherBook(tmp_path / "v.sqlite")
    book.accept(sign(KEY, Tag.CHARGE, channel, 1, 100), KEY.public_key, global_id=GID, contract=channel)
    book.accept(sign(KEY, Tag.CHARGE, channel, 3, 250), KEY.public_key, global_id=GID)
    for seqno, amount, why in [(3, 300, "seqno 3 is not above the last accepted #3"),
                               (2, 300, "seqno 2 is not above the last accepted #3"),
                               (4, 250, r"the total is not above the 0\.000000250 TON already signed at #3"),
                               (4, 200, "the total is not above")]:
        with pytest.raises(VoucherError, match=why):
            book.accept(sign(KEY, Tag.CHARGE, channel, seqno, amount), KEY.public_key, global_id=GID)
    with pytest.raises(VoucherError, match="not the proxy's"):
        book.accept(sign(sandbox_key("x"), Tag.CHARGE, channel, 9, 900), KEY.public_key, global_id=GID)
    other = contract_addresses()["worker_channel"]
    with pytest.raises(VoucherError, match=f"expected a voucher for {channel}"):
        book.accept(sign(KEY, Tag.CHARGE, other, 9, 900), KEY.public_key, global_id=GID, contract=channel)
    with pytest.raises(VoucherError, match="signed for the network with global id -3"):
        book.accept(sign_voucher(KEY, Tag.CHARGE, channel, 9, 900, global_id=TESTNET_GLOBAL_ID), KEY.public_key,
                    global_id=GID)
    book.close()
    reopened = VoucherBook(tmp_path / "v.sqlite")
    latest = reopened.latest(channel, Tag.CHARGE)
    assert latest is not None and (latest.global_id, latest.seqno, latest.amount) == (GID, 3, 250)
    latest.verify(KEY.public_key, GID)
    assert reopened.latest(channel, Tag.PAYOUT) is None
    # a final voucher may repeat the total: it only closes the channel
    reopened.accept(sign(KEY, Tag.FINAL, channel, 4, 250), KEY.public_key, global_id=GID)
    reopened.accept(sign(KEY, Tag.FINAL, channel, 5, 250), KEY.public_key, global_id=GID)
    with pytest.raises(VoucherError, match=r"not above the 0\.000000250 TON"):
        reopened.accept(sign(KEY, Tag.FINAL, channel, 6, 249), KEY.public_key, global_id=GID)


def test_an_older_voucher_is_refused_by_accept_and_only_superseded_for_keep_latest(tmp_path: Path) -> None:
    channel = contract_addresses()["client_channel"]
    book = VoucherBook(tmp_path / "v.sqlite")
    newest = sign(KEY, Tag.CHARGE, channel, 3, 250)
    book.accept(newest, KEY.public_key, global_id=GID)
    for older in (newest, sign(KEY, Tag.CHARGE, channel, 2, 200), sign(KEY, Tag.CHARGE, channel, 2, 250)):
        with pytest.raises(VoucherError, match="is not above the last accepted #3"):
            book.accept(older, KEY.public_key, global_id=GID)
        # answers end in any order: a voucher signed before the one kept is superseded, not an error
        assert book.keep_latest(older, KEY.public_key, global_id=GID, contract=channel) is False
    newer = sign(KEY, Tag.CHARGE, channel, 4, 300)
    assert book.keep_latest(newer, KEY.public_key, global_id=GID, contract=channel) is True
    assert book.latest(channel, Tag.CHARGE) == newer
    book.close()


def test_negative_seqnos_and_amounts_are_refused_zero_ones_are_not(tmp_path: Path) -> None:
    channel = contract_addresses()["client_channel"]
    book = VoucherBook(tmp_path / "v.sqlite")
    for seqno, amount in ((-1, 5), (5, -1)):
        unsigned = Voucher(int(Tag.CHARGE), GID, channel, seqno, amount, b"\0" * 64)
        with pytest.raises(VoucherError, match="negative seqno or amount"):
            book.accept(unsigned, KEY.public_key, global_id=GID)
    book.accept(sign(KEY, Tag.CHARGE, channel, 0, 0), KEY.public_key, global_id=GID)
    assert book.latest(channel, Tag.CHARGE) == sign(KEY, Tag.CHARGE, channel, 0, 0)


def test_vouchers_cannot_change_and_a_closed_book_reads_nothing(tmp_path: Path) -> None:
    channel = contract_addresses()["client_channel"]
    voucher = sign(KEY, Tag.CHARGE, channel, 1, 100)
    with pytest.raises(AttributeError):
        voucher.amount = 10**12  # type: ignore[misc]
    book = VoucherBook(tmp_path / "v.sqlite")
    book.close()
    with pytest.raises(sqlite3.ProgrammingError):
        book.latest(channel, Tag.CHARGE)


def test_a_book_from_before_vouchers_named_their_network_is_refused_clearly(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "v.sqlite")
    old.execute("CREATE TABLE vouchers (contract TEXT NOT NULL, tag INTEGER NOT NULL, seqno INTEGER NOT NULL, "
                "amount INTEGER NOT NULL, signature BLOB NOT NULL, PRIMARY KEY (contract, tag))")
    old.commit()
    old.close()
    with pytest.raises(VoucherError, match="from before vouchers named their network"):
        VoucherBook(tmp_path / "v.sqlite")


def test_amounts_print_in_ton_with_nine_decimals() -> None:
    assert [ton(n) for n in (0, 1, 1_500_000_000, -20_000_000)] == \
        ["0.000000000", "0.000000001", "1.500000000", "-0.020000000"]
