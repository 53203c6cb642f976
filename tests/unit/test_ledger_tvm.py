"""The TVM wrapper runs our compiled contracts exactly as the sandbox did (vectors/lifecycle.json)."""

from __future__ import annotations

import base64
import json

import pytest
from pytoniq_core import Address, Cell, begin_cell
from pytoniq_core.tlb.account import ShardAccount

from cocoon.ledger import contracts
from cocoon.ledger.tvm import TvmError, shared_tvm
from tests.unit.ledger_vectors import cell, vectors


@pytest.mark.parametrize("v", vectors(), ids=lambda v: f"{v['lt']}-{v['step']}-{v['contract']}")
def test_every_recorded_transaction_replays_exactly(v: dict) -> None:
    r = shared_tvm().run_transaction(base64.b64decode(v["shard_account_before"]), cell(v["in_msg"]),
                                     now=v["now"], lt=int(v["lt"]))
    assert r.lt == int(v["lt"])
    assert r.exit_code == v["exit_code"]
    assert r.aborted == v["aborted"]
    assert r.transaction.description.compute_ph.gas_used == int(v["gas_used"])
    assert r.total_fees == int(v["total_fees"])
    acc = ShardAccount.deserialize(Cell.one_from_boc(r.shard_account).begin_parse()).account
    assert acc.storage.balance.grams == int(v["balance_after"])
    data = acc.storage.state.state_init.data if acc.storage.state.state_init else None
    assert (data.hash if data else None) == (cell(v["data_after"]).hash if v["data_after"] else None)
    assert [(o.dest.to_str(is_user_friendly=False), o.message.info.value.grams, o.message.info.bounce,
             o.message.body.hash) for o in r.out_messages] == \
        [(o["dest"], int(o["value"]), o["bounce"], cell(o["body"]).hash) for o in v["out_msgs"]]


def test_code_cells_are_the_ones_the_vectors_ran_and_hashes_json_lists() -> None:
    ran = {v["contract"]: v["code_hash"] for v in vectors()}
    assert {name: contracts.code(name).hash.hex() for name in ran} == ran
    listed = json.loads((contracts.BUILD_DIR / "hashes.json").read_text())["contracts"]
    assert {name: contracts.code(name).hash.hex() for name in contracts.NAMES} == listed
    with pytest.raises(ValueError, match="no contract 'wallet'"):
        contracts.code("wallet")


def _open_channel_state() -> tuple[Cell, Cell, Address, int]:
    v = next(v for v in vectors() if v["step"] == "channel.charge" and v["contract"] == "client_channel")
    acc = ShardAccount.deserialize(cell(v["shard_account_before"]).begin_parse()).account
    init = acc.storage.state.state_init
    return init.code, init.data, Address(v["address"]), acc.storage.balance.grams


def test_get_methods_read_a_channel_and_its_identity() -> None:
    code, data, address, balance = _open_channel_state()
    tvm = shared_tvm()
    state = tvm.run_get_method(code, data, address, "get_channel_state", now=1_800_000_000, balance=balance)
    assert state == [1, 5_000_000_000, 2_000_000_000, 0, 0, 0]  # open, 5 TON of which 2 staked, nothing charged
    proxy, _client, *rest = tvm.run_get_method(code, data, address, "get_channel_identity", now=1_800_000_000,
                                              balance=balance)
    assert proxy.load_address().to_str(is_user_friendly=False) == next(
        v["address"] for v in vectors() if v["contract"] == "proxy")
    assert rest[1:] == [0, 3600, 1_000_000_000]  # nonce, close delay, min stake


def test_balances_and_logical_times_beyond_32_bits_are_not_cut() -> None:
    # pytvm declares these parameters 32-bit; the wrapper fixes them (a balance over 4.29 TON, an lt over 2³²)
    code, data, address, _ = _open_channel_state()
    big = 10**12
    stack = shared_tvm().run_get_method(code, data, address, "get_channel_state", now=1_800_000_000, balance=big)
    assert stack[0] == 1
    v = next(v for v in vectors() if v["step"] == "proxy.commit")
    r = shared_tvm().run_transaction(base64.b64decode(v["shard_account_before"]), cell(v["in_msg"]),
                                     now=v["now"], lt=2**40)
    assert r.lt == 2**40 and r.exit_code == 0


def test_a_failing_get_method_and_a_malformed_message_raise() -> None:
    code, data, address, balance = _open_channel_state()
    with pytest.raises(TvmError, match="get-method no_such_method failed: exit code 11"):
        shared_tvm().run_get_method(code, data, address, "no_such_method", now=1, balance=balance)
    v = vectors()[0]
    with pytest.raises(TvmError, match="emulation failed"):
        shared_tvm().run_transaction(base64.b64decode(v["shard_account_before"]),
                                     begin_cell().store_uint(7, 3).end_cell(), now=v["now"], lt=1)
