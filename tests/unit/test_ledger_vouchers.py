"""Vouchers: the exact signature the contracts verify, and books that only ever accept a newer one."""

from __future__ import annotations

from pathlib import Path

import pytest

from cocoon.ledger.contracts import Op, Tag
from cocoon.ledger.vouchers import Voucher, VoucherBook, VoucherError, sign_voucher, ton
from tests.unit.ledger_vectors import contract_addresses, message, sandbox_key, steps

KEY = sandbox_key("proxy")


@pytest.mark.parametrize("step,tag,op", [("channel.charge", Tag.CHARGE, Op.CHARGE),
                                         ("worker.redeem", Tag.PAYOUT, Op.REDEEM)])
def test_signatures_are_byte_for_byte_the_ones_the_contracts_accepted(step: str, tag: Tag, op: Op) -> None:
    first = dict(steps())[step][0]
    s = message(first["in_msg"]).body.begin_parse()  # the message as recorded; its body holds the voucher
    assert s.load_uint(32) == op
    s.load_uint(64)
    seqno, amount, signature = s.load_uint(64), s.load_coins(), s.load_bytes(64)
    ours = sign_voucher(KEY, tag, first["address"], seqno, amount)
    assert ours.signature == signature
    ours.verify(KEY.public_key)


def test_a_voucher_signed_by_another_key_or_for_another_tag_does_not_verify() -> None:
    channel = contract_addresses()["client_channel"]
    v = sign_voucher(KEY, Tag.CHARGE, channel, 1, 10**9)
    with pytest.raises(VoucherError, match=r"charge voucher #1 for 1\.000000000 TON on 0:.*not the proxy's"):
        v.verify(sandbox_key("client").public_key)
    with pytest.raises(VoucherError, match="final voucher #1"):
        Voucher(int(Tag.FINAL), v.contract, v.seqno, v.amount, v.signature).verify(KEY.public_key)


def test_the_book_keeps_only_strictly_newer_vouchers_across_restarts(tmp_path: Path) -> None:
    channel = contract_addresses()["client_channel"]
    book = VoucherBook(tmp_path / "v.sqlite")
    book.accept(sign_voucher(KEY, Tag.CHARGE, channel, 1, 100), KEY.public_key, contract=channel)
    book.accept(sign_voucher(KEY, Tag.CHARGE, channel, 3, 250), KEY.public_key)
    for seqno, amount, why in [(3, 300, "seqno 3 is not above the last accepted #3"),
                               (2, 300, "seqno 2 is not above the last accepted #3"),
                               (4, 250, r"the total is not above the 0\.000000250 TON already signed at #3"),
                               (4, 200, "the total is not above")]:
        with pytest.raises(VoucherError, match=why):
            book.accept(sign_voucher(KEY, Tag.CHARGE, channel, seqno, amount), KEY.public_key)
    with pytest.raises(VoucherError, match="not the proxy's"):
        book.accept(sign_voucher(sandbox_key("x"), Tag.CHARGE, channel, 9, 900), KEY.public_key)
    other = contract_addresses()["worker_channel"]
    with pytest.raises(VoucherError, match=f"expected a voucher for {channel}"):
        book.accept(sign_voucher(KEY, Tag.CHARGE, other, 9, 900), KEY.public_key, contract=channel)
    book.close()
    reopened = VoucherBook(tmp_path / "v.sqlite")
    latest = reopened.latest(channel, Tag.CHARGE)
    assert latest is not None and (latest.seqno, latest.amount) == (3, 250)
    latest.verify(KEY.public_key)
    assert reopened.latest(channel, Tag.PAYOUT) is None
    # a final voucher may repeat the total: it only closes the channel
    reopened.accept(sign_voucher(KEY, Tag.FINAL, channel, 4, 250), KEY.public_key)
    reopened.accept(sign_voucher(KEY, Tag.FINAL, channel, 5, 250), KEY.public_key)
    with pytest.raises(VoucherError, match=r"not above the 0\.000000250 TON"):
        reopened.accept(sign_voucher(KEY, Tag.FINAL, channel, 6, 249), KEY.public_key)


def test_amounts_print_in_ton_with_nine_decimals() -> None:
    assert [ton(n) for n in (0, 1, 1_500_000_000, -20_000_000)] == \
        ["0.000000000", "0.000000001", "1.500000000", "-0.020000000"]
