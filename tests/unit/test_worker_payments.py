"""The worker's money on a real local chain: payout vouchers kept or refused, lost payouts noticed, redemption once
the threshold is reached (or when forced), in the background round too."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from cocoon.config import Prices, ProxyConfig, WorkerConfig
from cocoon.ledger.base import TON, Terms
from cocoon.ledger.contracts import Tag
from cocoon.ledger.devnet import ProxySpec, prepare
from cocoon.ledger.vouchers import sign_voucher
from cocoon.nodekeys import NodeKeys
from cocoon.wire.messages import Payout
from cocoon.worker.payments import WorkerPayments

ENDPOINT = "127.0.0.1:10100"


def test_a_worker_keeps_its_payouts_and_redeems_them_when_due(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    cfg = WorkerConfig(name="worker-1", state_dir=str(tmp_path), payments=True, proxy=ENDPOINT,
                       redeem_threshold_nanoton=TON, chain_poll_s=0.01)
    proxy = NodeKeys("proxy", ProxyConfig(name="proxy-1", state_dir=str(tmp_path)))
    key = proxy.voucher_key()
    prepare(tmp_path, proxies=[ProxySpec(ENDPOINT, proxy.wallet(), key)],
            parties=[NodeKeys("worker", cfg).wallet()], prices=Prices(), terms=Terms()).close()
    payments = WorkerPayments(cfg)
    assert (payments.earned_nanoton, payments.redeemed_nanoton, payments.refused_vouchers) == (0, 0, 0)
    stray = sign_voucher(key, Tag.PAYOUT, "0:" + "0" * 64, 1, 1, global_id=0)
    payments.accept(ENDPOINT, Payout(call_id=1, fee_nanoton=1, voucher=stray))
    assert payments.earned_nanoton == 0  # no channel found yet: nothing to keep
    payments.open(ENDPOINT)
    try:
        # a proxy linked again (every reconnect opens) costs no chain call: its purse is kept
        finds: list[str] = []
        find_proxy = payments.ledger.find_proxy
        payments.ledger.find_proxy = lambda a: (finds.append(a), find_proxy(a))[1]  # type: ignore[method-assign]
        purse = payments.purses[ENDPOINT]
        payments.open(ENDPOINT)
        assert finds == [] and payments.purses[ENDPOINT] is purse
        channel, gid = payments.purses[ENDPOINT].channel, payments.ledger.global_id()

        def payout(seqno: int, amount: int, fee: int, tag: Tag = Tag.PAYOUT) -> Payout:
            return Payout(call_id=seqno, fee_nanoton=fee,
                          voucher=sign_voucher(key, tag, channel, seqno, amount, global_id=gid))

        caplog.set_level(logging.INFO, logger="cocoon.worker.payments")
        payments.accept(ENDPOINT, payout(1, TON // 4, TON // 4))
        assert "covers earlier requests" not in caplog.text
        payments.accept(ENDPOINT, payout(3, 3 * TON // 4, TON // 4))  # #2 was lost on the way
        assert "a payout voucher covers earlier requests too" in caplog.text
        payments.accept(ENDPOINT, payout(4, TON, TON // 4, Tag.CHARGE))
        payments.accept(ENDPOINT, payout(2, TON // 2, TON // 4))  # older than the one kept
        assert (payments.refused_vouchers, payments.earned_nanoton) == (2, 3 * TON // 4)
        payments.redeem(False)  # below the threshold
        assert payments.redeemed_nanoton == 0 and "redeemed" not in caplog.text
        payments.redeem(True)
        assert payments.redeemed_nanoton == 3 * TON // 4 and "redeemed the payout voucher" in caplog.text
        payments.accept(ENDPOINT, payout(5, 2 * TON, 5 * TON // 4))

        async def until_redeemed() -> None:  # the background round redeems what reached the threshold
            task = asyncio.create_task(payments.run())
            try:
                for _ in range(500):
                    if payments.redeemed_nanoton == 2 * TON:
                        return
                    await asyncio.sleep(0.01)
            finally:
                task.cancel()

        asyncio.run(until_redeemed())
        assert payments.redeemed_nanoton == 2 * TON
        payments.accept(ENDPOINT, payout(6, 2 * TON + 1, 1))  # below the threshold: the rounds leave it
        rounds: list[bool] = []
        redeem = payments.redeem
        payments.redeem = lambda force: (rounds.append(force), redeem(force))[1]  # type: ignore[method-assign]

        async def three_rounds() -> None:
            task = asyncio.create_task(payments.run())
            try:
                for _ in range(500):
                    if len(rounds) >= 3:
                        return
                    await asyncio.sleep(0.01)
            finally:
                task.cancel()

        asyncio.run(three_rounds())
        assert rounds[:3] == [False] * 3 and payments.redeemed_nanoton == 2 * TON
    finally:
        payments.close()
    with pytest.raises(sqlite3.ProgrammingError):  # closed
        payments.vouchers.latest(channel, Tag.PAYOUT)
    with pytest.raises(sqlite3.ProgrammingError):
        payments.ledger.balance(payments.wallet.address)
