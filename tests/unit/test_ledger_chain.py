"""The local chain: recorded vectors replay through its message queue exactly; operations are atomic; coins are
conserved; its clock can be moved for every process at once."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pytoniq_core import Address

from cocoon.ledger import layouts
from cocoon.ledger.base import TON, LedgerError
from cocoon.ledger.chain import LocalChain
from cocoon.ledger.contracts import Op
from cocoon.ledger.wallet import Wallet
from tests.unit.ledger_vectors import SANDBOX_GLOBAL_ID, cell, message, steps, vectors


def test_lifecycle_replays_through_the_queue_with_the_same_states_exit_codes_and_logical_times(
        tmp_path: Path) -> None:
    """Each step's first message goes in; the chain's queue produces every following transaction itself
    (notifications, bounces, refunds to wallets), with the sandbox's logical times."""
    ours = {v["address"] for v in vectors()}
    now = [vectors()[0]["now"]]
    chain = LocalChain(tmp_path / "chain.sqlite", global_id=SANDBOX_GLOBAL_ID, clock=lambda: now[0],
                       start_lt=int(vectors()[0]["lt"]))
    for v in vectors():  # the sandbox's wallets: they only receive here
        for addr in [o["dest"] for o in v["out_msgs"]] + [message(v["in_msg"]).info.src.to_str(False)]:
            if addr not in ours:
                chain.watch_wallet(addr)
    loaded: set[str] = set()
    for name, group in steps():
        for v in group:
            if v["address"] not in loaded:
                chain.load_account(v["address"], base64.b64decode(v["shard_account_before"]))
                loaded.add(v["address"])
        now[0] = group[0]["now"]
        receipt = chain.deliver(cell(group[0]["in_msg"]))
        produced = [t for t in receipt.transactions if t.address in ours]
        assert len(produced) == len(group), name
        for t, v in zip(produced, group, strict=True):
            assert (t.lt, t.exit_code, t.total_fees) == (int(v["lt"]), v["exit_code"], int(v["total_fees"])), name
            acc = chain.account(v["address"])
            assert acc is not None and acc.balance == int(v["balance_after"]), name
            assert acc.data is not None and acc.data.hash == cell(v["data_after"]).hash, name
            assert t.result is not None and t.result.transaction.in_msg is not None


def _funded(tmp_path: Path, amount: int = 10 * TON) -> tuple[LocalChain, Wallet]:
    chain = LocalChain(tmp_path / "chain.sqlite", clock=lambda: 1_800_000_000)
    wallet = Wallet(b"\x01" * 32)
    chain.open_wallet(wallet)
    chain.mint(wallet.address, amount)
    return chain, wallet


def _to_nowhere(wallet: Wallet, value: int, bounce: bool = True) -> object:
    nowhere = Address((0, b"\x42" * 32))
    return layouts.internal_message(Address(wallet.address), nowhere, value, layouts.op_only(Op.DEPOSIT), None,
                                    bounce)


def test_a_bounce_from_an_empty_address_comes_back_less_fees_and_coins_are_conserved(tmp_path: Path) -> None:
    chain, wallet = _funded(tmp_path)
    receipt = chain.send(wallet, _to_nowhere(wallet, TON))
    assert [t.address for t in receipt.transactions] == ["0:" + "42" * 32, wallet.address]
    assert receipt.transactions[1].bounced
    assert chain.balance(wallet.address) == 10 * TON - receipt.fees
    audit = chain.audit()
    assert audit.balanced and audit.fees == receipt.fees and audit.minted == 10 * TON
    # a non-bounceable message to an empty address leaves its value there (an uninitialized account)
    receipt = chain.send(wallet, _to_nowhere(wallet, TON, bounce=False))
    acc = chain.account("0:" + "42" * 32)
    assert acc is not None and acc.status == "uninit" and acc.balance == TON - receipt.transactions[0].total_fees
    assert chain.audit().balanced


def test_a_wallet_cannot_spend_more_than_it_holds_nor_send_as_another(tmp_path: Path) -> None:
    chain, wallet = _funded(tmp_path, TON)
    with pytest.raises(LedgerError, match=f"wallet {wallet.address} holds 1000000000 nanoTON, the operation "
                                          "needs 2000000000"):
        chain.send(wallet, _to_nowhere(wallet, 2 * TON))
    thief = Wallet(b"\x02" * 32, address=wallet.address)  # claims the address with another key
    with pytest.raises(LedgerError, match="is not open on this chain"):
        chain.send(thief, _to_nowhere(thief, TON))
    assert chain.balance(wallet.address) == TON and chain.transactions() == []


def test_chain_time_moves_for_every_process_and_never_back(tmp_path: Path) -> None:
    clock = [1_800_000_000.0]
    a = LocalChain(tmp_path / "chain.sqlite", clock=lambda: clock[0])
    b = LocalChain(tmp_path / "chain.sqlite", clock=lambda: clock[0])
    assert a.now() == b.now() == 1_800_000_000
    a.advance(3600)
    assert b.now() == 1_800_003_600
    wallet = Wallet(b"\x03" * 32)
    a.open_wallet(wallet)
    a.mint(wallet.address, TON)
    a.send(wallet, _to_nowhere(wallet, TON // 10))  # an operation at 1_800_003_600
    clock[0] -= 7200  # the host clock steps back: chain time does not
    assert b.now() == 1_800_003_600
