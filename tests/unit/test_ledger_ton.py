"""The `ton` backend builds, for every operation, exactly the message the sandbox tests sent (lifecycle vectors),
wrapped in a signed wallet v4r2 transfer. The liteserver is replaced by the recorded account states."""

from __future__ import annotations

import base64
import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import VerifyKey
from pytoniq_core import Address, Cell, Slice
from pytoniq_core.tlb.account import ShardAccount
from pytoniq_core.tlb.transaction import ExternalMsgInfo, MessageAny

from cocoon.ledger.base import TON
from cocoon.ledger.contracts import Tag
from cocoon.ledger.local import LocalLedger
from cocoon.ledger.ton import DEFAULT_WALLET_ID, SEND_MODE, TonLedger
from cocoon.ledger.tvm import shared_tvm
from cocoon.ledger.vouchers import sign_voucher
from cocoon.ledger.wallet import Wallet
from tests.unit.ledger_vectors import SANDBOX_GLOBAL_ID, contract_addresses, message, sandbox_key, steps

NOW = 1_800_000_000
sign = functools.partial(sign_voucher, global_id=SANDBOX_GLOBAL_ID)  # what the sandbox signed


class RecordedChain:
    """Answers like a liteserver from the recorded account states; the root comes from a local chain."""

    def __init__(self, fallback: LocalLedger) -> None:
        self.states: dict[str, bytes] = {}
        self.sent: list[Cell] = []
        self.wallets: set[str] = set()  # deployed wallets (their seqno is 41)
        self.fallback = fallback

    def _account(self, address: str) -> Any:
        return ShardAccount.deserialize(Slice.one_from_boc(self.states[address])).account

    def run_get(self, address: str, method: str, stack: list[Any]) -> list[Any]:
        if method == "seqno":
            return [41]  # the operator's wallet
        if address not in self.states:
            return self.fallback.run_get(address, method, stack)
        acc = self._account(address)
        init = acc.storage.state.state_init
        return shared_tvm().run_get_method(init.code, init.data, Address(address), method, stack, now=NOW,
                                           balance=acc.storage.balance.grams)

    def is_active(self, address: str) -> bool:
        if address in self.wallets:
            return True
        if address not in self.states:  # the root
            return self.fallback.is_active(address)
        acc = self._account(address)
        return acc is not None and acc.storage.state.type_ == "account_active"

    def balance(self, address: str) -> int:
        return self._account(address).storage.balance.grams

    def send_boc(self, boc: bytes, *, dest: str, valid_until: int) -> None:
        self.sent.append(Cell.one_from_boc(boc))


@pytest.fixture
def ton(tmp_path: Path) -> Iterator[tuple[TonLedger, RecordedChain]]:
    local = LocalLedger(tmp_path / "l.sqlite")
    chain = RecordedChain(local)
    ledger = TonLedger(local.root, chain, sync_s=3600, clock=lambda: NOW)
    yield ledger, chain
    ledger.close()
    local.close()


def _unwrap(external: Cell, wallet: Wallet) -> MessageAny:
    """Check the wallet v4r2 envelope (addressed to the wallet, signed by its key); the internal message in it."""
    msg = MessageAny.deserialize(external.begin_parse())
    assert isinstance(msg.info, ExternalMsgInfo) and msg.info.dest.to_str(False) == wallet.address
    body = msg.body.begin_parse()
    signature = body.load_bytes(64)
    signed = body.copy().to_cell()
    VerifyKey(wallet.public_key).verify(signed.hash, signature)
    assert [body.load_uint(32), body.load_uint(32), body.load_uint(32), body.load_uint(8), body.load_uint(8)] == \
        [DEFAULT_WALLET_ID, NOW + 60, 41, 0, SEND_MODE]
    return MessageAny.deserialize(body.load_ref().begin_parse())


def test_every_operation_sends_the_sandbox_tests_message(ton: tuple[TonLedger, RecordedChain]) -> None:
    ledger, chain = ton
    addr = contract_addresses()
    first = {name: group[0] for name, group in steps()}
    src = {name: message(v["in_msg"]).info.src.to_str(False) for name, v in first.items()}
    key = sandbox_key("proxy")
    owner = Wallet(b"\x01" * 32, address=src["proxy.add_stake"])
    client = Wallet(b"\x02" * 32, address=src["channel.open (deploy + deposit + register)"])
    worker = Wallet(b"\x03" * 32, address=src["worker.redeem (deploy)"])
    proxy, channel, wchannel = addr["proxy"], addr["client_channel"], addr["worker_channel"]
    chain.wallets |= {owner.address, client.address, worker.address}
    operations = {
        "proxy.add_stake": (owner, lambda: ledger.add_proxy_stake(owner, proxy, TON)),
        "proxy.commit": (owner, lambda: ledger.commit(owner, proxy, 1, b"\x5a" * 32)),
        "channel.open (deploy + deposit + register)": (
            client, lambda: ledger.open_channel(client, proxy, 5 * TON, 2 * TON)),
        "channel.deposit": (client, lambda: ledger.deposit(client, channel, TON)),
        "channel.withdraw": (client, lambda: ledger.withdraw(client, channel, TON)),
        "channel.charge": (owner, lambda: ledger.settle_charge(
            owner, sign(key, Tag.CHARGE, channel, 1, TON))),
        "worker.redeem (deploy)": (worker, lambda: ledger.redeem(
            worker, proxy, sign(key, Tag.PAYOUT, wchannel, 1, TON // 2))),
        "worker.redeem": (worker, lambda: ledger.redeem(
            worker, proxy, sign(key, Tag.PAYOUT, wchannel, 2, 8 * TON // 10))),
        "channel.request_close": (client, lambda: ledger.request_close(client, channel)),
        "channel.finalize_close": (client, lambda: ledger.finalize_close(client, channel)),
    }
    checked = 0
    for name, group in steps():
        for v in group:  # the chain as it was before this step
            chain.states[v["address"]] = base64.b64decode(v["shard_account_before"])
        if name not in operations:
            continue
        wallet, operation = operations[name]
        assert operation().fees is None  # sent, not yet executed
        sent = _unwrap(chain.sent[-1], wallet)
        want = message(group[0]["in_msg"])
        assert sent.info.src is None  # the wallet contract fills in its own address
        assert (sent.info.dest, sent.info.value.grams, sent.info.bounce) == \
            (want.info.dest, want.info.value.grams, want.info.bounce), name
        assert sent.body.hash == want.body.hash, name
        assert (sent.init.serialize().hash if sent.init else None) == \
            (want.init.serialize().hash if want.init else None), name
        checked += 1
    assert checked == len(operations)


def test_the_registry_view_comes_from_the_cache_and_a_background_sync(tmp_path: Path) -> None:
    local = LocalLedger(tmp_path / "l.sqlite")
    chain = RecordedChain(local)
    calls: list[str] = []  # get-methods run on the caller's thread
    run_get = chain.run_get

    def counting(address: str, method: str, stack: list[Any]) -> list[Any]:
        if threading.current_thread() is threading.main_thread():
            calls.append(method)
        return run_get(address, method, stack)

    chain.run_get = counting  # type: ignore[method-assign]
    ledger = TonLedger(local.root, chain, sync_s=0.05)
    try:
        assert ledger.root_params() == local.root_params()
        local.set_allowed_images("worker", ["ab" * 32])
        calls.clear()
        ledger.refresh()
        ledger.root_params()
        assert calls == []  # never the network on the caller's path
        deadline = time.monotonic() + 5
        while ledger.refresh().worker_image_hashes != {"ab" * 32}:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        ledger.close()
        local.close()
