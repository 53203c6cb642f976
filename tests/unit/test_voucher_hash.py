"""The voucher hash computed from bits (the hot path) equals the hash of the cell pytoniq-core builds, the one
the contracts verify, over the whole range of every field; a field out of its range is a ValueError (a voucher
from a peer is hostile input: it must be refused, never crash its reader)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from cocoon.ledger.contracts import Tag
from cocoon.ledger.vouchers import Voucher, VoucherError, voucher_cell, voucher_hash

ADDRESSES = st.builds(lambda wc, h: f"{wc}:{h:064x}", st.sampled_from([0, -1, 1, 127, -128]),
                      st.integers(0, (1 << 256) - 1))
CONTRACT = "0:" + "ab" * 32


@settings(max_examples=400, deadline=None)
@given(tag=st.integers(0, (1 << 32) - 1), global_id=st.integers(-(1 << 31), (1 << 31) - 1), contract=ADDRESSES,
       seqno=st.integers(0, (1 << 64) - 1),
       amount=st.one_of(st.integers(0, 1 << 16), st.integers(0, (1 << 120) - 1)))
def test_hash_from_bits_is_the_cells_hash(tag: int, global_id: int, contract: str, seqno: int, amount: int) -> None:
    assert voucher_hash(tag, global_id, contract, seqno, amount) == \
        voucher_cell(tag, global_id, contract, seqno, amount).hash


def test_every_coin_length_and_every_boundary_inside() -> None:
    for amount in [0, 1, 255, 256, *(1 << b for b in range(8, 120, 8)), *((1 << b) - 1 for b in range(8, 121, 8))]:
        for tag, gid, seqno in [(0, 0, 0), ((1 << 32) - 1, -(1 << 31), (1 << 64) - 1), (3, (1 << 31) - 1, 1)]:
            assert voucher_hash(tag, gid, CONTRACT, seqno, amount) == \
                voucher_cell(tag, gid, CONTRACT, seqno, amount).hash
    for workchain in (-128, 127):
        contract = f"{workchain}:" + "cd" * 32
        assert voucher_hash(1, 1, contract, 1, 1) == voucher_cell(1, 1, contract, 1, 1).hash


def test_a_user_friendly_address_hashes_as_its_raw_form() -> None:
    raw = "0:" + "11" * 32
    friendly = voucher_cell(1, 5, raw, 1, 1).begin_parse().skip_bits(64).load_address().to_str()
    assert friendly != raw
    assert voucher_hash(1, 5, friendly, 1, 1) == voucher_hash(1, 5, raw, 1, 1)


@pytest.mark.parametrize(("field", "args"), [
    ("tag", (1 << 32, 0, 1, 1)), ("tag", (-1, 0, 1, 1)),
    ("global id", (1, 1 << 31, 1, 1)), ("global id", (1, -(1 << 31) - 1, 1, 1)),
    ("seqno", (1, 0, 1 << 64, 1)), ("seqno", (1, 0, -1, 1)),
    ("amount", (1, 0, 1, 1 << 120)), ("amount", (1, 0, 1, -1)),
])
def test_a_field_out_of_range_is_a_value_error_naming_it(field: str, args: tuple[int, int, int, int]) -> None:
    tag, gid, seqno, amount = args
    with pytest.raises(ValueError, match=f"voucher's {field} must be in"):
        voucher_hash(tag, gid, CONTRACT, seqno, amount)


@pytest.mark.parametrize("workchain", [-129, 128])
def test_a_workchain_out_of_range_is_a_value_error(workchain: int) -> None:
    with pytest.raises(ValueError, match="workchain"):
        voucher_hash(1, 0, f"{workchain}:" + "00" * 32, 1, 1)


@pytest.mark.parametrize("contract", ["0:zz", "0:" + "0" * 63, "nonsense", "", "0:" + "0" * 65])
def test_a_malformed_address_is_a_value_error(contract: str) -> None:
    with pytest.raises(ValueError):
        voucher_hash(1, 0, contract, 1, 1)


@pytest.mark.parametrize(("tag", "seqno", "amount"), [
    (Tag.PAYOUT, 1 << 64, 1), (Tag.CHARGE, 1, 1 << 120), (12345, 1, 1), (1 << 40, 1, 1)])
def test_a_peers_voucher_beyond_the_cells_ranges_is_refused_not_a_crash(tag: int, seqno: int, amount: int) -> None:
    """A proxy's voucher is decoded from the wire with integers of any size: verifying one whose seqno or amount
    did not fit its cell raised pytoniq-core's OverflowError, and one with an unknown tag a ValueError from naming
    it, past the callers' VoucherError handling."""
    key = SigningKey.generate()
    voucher = Voucher(int(tag), 7, CONTRACT, seqno, amount, b"\0" * 64)
    with pytest.raises(VoucherError):
        voucher.verify(bytes(key.verify_key), 7)
