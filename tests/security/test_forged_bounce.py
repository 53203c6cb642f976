"""Issue 15, item 9: on the local chain a forged bounced message reset a worker channel's `paid`, so one payout
voucher paid twice. The worker, who holds its wallet and can write the shared chain file like any party, sent its
own channel what the proxy's refusal of its payout would look like (the bounced flag set, 0xffffffff, then the
`payout_request` with the amount) and redeemed the same voucher again: the proxy paid it a second time.

On TON only the chain marks a message bounced (its action phase clears the flag on every message a contract sends;
an external message has none), and a bounce comes from where the bounced message went. The local chain now decides
that too: a wallet's message carrying the flag (or fees, or a logical time: the chain's to write) is refused. And
the channels believe a bounce only from their proxy, wherever it comes from."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytoniq_core import Address, begin_cell
from pytoniq_core.tlb.block import CurrencyCollection
from pytoniq_core.tlb.transaction import InternalMsgInfo

from cocoon.ledger import layouts
from cocoon.ledger.base import TON, LedgerError, LedgerRefused
from cocoon.ledger.contracts import Op, Tag
from cocoon.ledger.local import LocalLedger
from cocoon.ledger.vouchers import sign_voucher
from cocoon.ledger.wallet import Wallet


def _forged_refusal(worker: Wallet, channel: str, amount: int, **header: object) -> object:
    """What the proxy's refusal of a `payout_request` for `amount` looks like, as the worker's own message."""
    body = (begin_cell().store_uint(0xFFFFFFFF, 32).store_uint(Op.PAYOUT_REQUEST, 32).store_uint(0, 64)
            .store_coins(amount).end_cell())
    fields: dict[str, object] = {"ihr_disabled": True, "bounce": False, "bounced": True, "ihr_fee": 0,
                                 "fwd_fee": 0, "created_lt": 0, "created_at": 0, **header}
    info = InternalMsgInfo(src=Address(worker.address), dest=Address(channel), value=CurrencyCollection(TON // 20),
                           **fields)
    return layouts.message_cell(info.serialize(), body, None)


def test_item_9_a_forged_bounce_cannot_make_one_payout_voucher_pay_twice(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    key = Wallet(b"\x10" * 32)  # the proxy's voucher key
    operator, client, worker = (Wallet(bytes([i]) * 32) for i in (0x11, 0x12, 0x13))
    for wallet in (operator, client, worker):
        ledger.fund(wallet, 100 * TON)
    proxy = ledger.register_proxy(operator.address, key.public_key, "127.0.0.1:10100")
    ledger.add_proxy_stake(operator, proxy, 10 * TON)
    # the proxy earned 3 TON from a client and owes its worker 1 TON
    channel = ledger.client_channel_address(proxy, client.address)
    ledger.open_channel(client, proxy, 5 * TON, 2 * TON)
    gid = ledger.global_id()
    ledger.settle_charge(operator, sign_voucher(key, Tag.CHARGE, channel, 1, 3 * TON, global_id=gid))
    worker_channel = ledger.worker_channel_address(proxy, worker.address)
    payout = sign_voucher(key, Tag.PAYOUT, worker_channel, 1, TON, global_id=gid)
    ledger.redeem(worker, proxy, payout)
    assert ledger.worker_channel_state(worker_channel).paid == TON
    wallet_after_payout = ledger.balance(worker.address)

    # the attack: the worker forges the proxy's refusal and sends it from its wallet
    with pytest.raises(LedgerError, match="a wallet cannot send a bounce: only the chain marks a message bounced"):
        ledger.chain.send(worker, _forged_refusal(worker, worker_channel, TON))
    assert ledger.balance(worker.address) == wallet_after_payout, "a refused message costs nothing"
    # the channel, too, believes bounces from its proxy only (as if a chain had let the flag through)
    ledger.chain.deliver(_forged_refusal(worker, worker_channel, TON))
    assert ledger.worker_channel_state(worker_channel).paid == TON
    # so the same voucher again pays nothing
    with pytest.raises(LedgerRefused, match=r"exit code 103 \(old_voucher"):
        ledger.redeem(worker, proxy, payout)
    assert ledger.proxy_state(proxy).paid_out == TON
    assert ledger.balance(worker.address) < wallet_after_payout  # only the failed redeem's fees


def test_item_9_the_chain_decides_every_header_field_a_sender_could_abuse(tmp_path: Path) -> None:
    """The same hole, other fields: a sender-chosen IHR fee was added to the value the chain delivered (coins out
    of nothing), forward fees and logical times are the chain's to count. A wallet's message says only where,
    how much, whether it may bounce, and what."""
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    wallet = Wallet(b"\x21" * 32)
    ledger.fund(wallet, 10 * TON)
    nowhere = Address((0, b"\x42" * 32))
    for field, value in (("ihr_disabled", False), ("ihr_fee", 5 * TON), ("fwd_fee", TON), ("created_lt", 7),
                         ("created_at", 1)):
        info = InternalMsgInfo(ihr_disabled=True, bounce=False, bounced=False, src=Address(wallet.address),
                               dest=nowhere, value=CurrencyCollection(TON), ihr_fee=0, fwd_fee=0, created_lt=0,
                               created_at=0)
        setattr(info, field, value)
        with pytest.raises(LedgerError, match="leaves fees, logical time and creation time to the chain"):
            ledger.chain.send(wallet, layouts.message_cell(info.serialize(), layouts.op_only(Op.DEPOSIT), None))
    assert ledger.balance(wallet.address) == 10 * TON
    assert ledger.balance(nowhere.to_str(is_user_friendly=False)) == 0
    assert ledger.chain.audit().balanced
