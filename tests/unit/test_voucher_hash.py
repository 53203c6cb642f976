"""The voucher hash computed from bits (the hot path) equals the hash of the cell pytoniq-core builds, the one
the contracts verify, over the whole range of every field; values outside it raise as the cell builder does."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.ledger.vouchers import voucher_cell, voucher_hash

ADDRESSES = st.builds(lambda wc, h: f"{wc}:{h:064x}", st.sampled_from([0, -1, 1, 127, -128]),
                      st.integers(0, (1 << 256) - 1))


@settings(max_examples=400, deadline=None)
@given(tag=st.integers(0, (1 << 32) - 1), global_id=st.integers(-(1 << 31), (1 << 31) - 1), contract=ADDRESSES,
       seqno=st.integers(0, (1 << 64) - 1),
       amount=st.one_of(st.integers(0, 1 << 16), st.integers(0, (1 << 120) - 1)))
def test_hash_from_bits_is_the_cells_hash(tag: int, global_id: int, contract: str, seqno: int, amount: int) -> None:
    assert voucher_hash(tag, global_id, contract, seqno, amount) == \
        voucher_cell(tag, global_id, contract, seqno, amount).hash


def test_every_coin_length_and_boundary() -> None:
    contract = "0:" + "ab" * 32
    for amount in [0, 1, 255, 256, *(1 << b for b in range(8, 120, 8)), *((1 << b) - 1 for b in range(8, 121, 8))]:
        for tag, gid, seqno in [(0, 0, 0), ((1 << 32) - 1, -(1 << 31), (1 << 64) - 1), (3, (1 << 31) - 1, 1)]:
            assert voucher_hash(tag, gid, contract, seqno, amount) == \
                voucher_cell(tag, gid, contract, seqno, amount).hash


def test_a_user_friendly_address_hashes_as_its_raw_form() -> None:
    raw = "0:" + "11" * 32
    friendly = voucher_cell(1, 5, raw, 1, 1).begin_parse().skip_bits(64).load_address().to_str()
    assert voucher_hash(1, 5, friendly, 1, 1) == voucher_hash(1, 5, raw, 1, 1)


@pytest.mark.parametrize("args", [
    (1 << 32, 0, 1, 1), (-1, 0, 1, 1), (1, 1 << 31, 1, 1), (1, 0, 1 << 64, 1), (1, 0, -1, 1),
    (1, 0, 1, 1 << 120), (1, 0, 1, -1),
])
def test_out_of_range_raises_like_the_cell_builder(args: tuple[int, int, int, int]) -> None:
    tag, gid, seqno, amount = args
    contract = "0:" + "00" * 32
    with pytest.raises(Exception):  # noqa: B017 - the same exception the cell builder raises, whatever it is
        voucher_cell(tag, gid, contract, seqno, amount)
    with pytest.raises(Exception):  # noqa: B017
        voucher_hash(tag, gid, contract, seqno, amount)


@pytest.mark.parametrize("contract", ["0:zz", "0:" + "0" * 63, "nonsense", "", "999:" + "0" * 64])
def test_a_malformed_address_raises(contract: str) -> None:
    with pytest.raises(Exception):  # noqa: B017
        voucher_hash(1, 0, contract, 1, 1)
