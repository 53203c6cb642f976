"""The worker's money: the payout vouchers its proxy signs after each request (kept, checked), redeemed on chain
once enough has accumulated to be worth the fees (`redeem_threshold_nanoton`). Chain operations run in threads.
"""

from __future__ import annotations

import asyncio
import logging

from cocoon.config import WorkerConfig
from cocoon.ledger.devnet import ledger_path, vouchers_path
from cocoon.ledger.local import LocalLedger
from cocoon.ledger.purse import WorkerPurse
from cocoon.ledger.vouchers import VoucherBook, VoucherError
from cocoon.nodekeys import NodeKeys
from cocoon.wire.messages import Payout

log = logging.getLogger(__name__)


class WorkerPayments:
    def __init__(self, cfg: WorkerConfig) -> None:
        state = cfg.state_path
        self.cfg = cfg
        self.ledger = LocalLedger(ledger_path(state))
        self.wallet = NodeKeys("worker", cfg).wallet()  # sealed to this worker's role, image and name
        self.vouchers = VoucherBook(vouchers_path(state, cfg.name))
        self.purse: WorkerPurse | None = None
        self.redeemed_nanoton = 0
        self.refused_vouchers = 0

    def open(self) -> None:
        """Find the proxy's contract and this worker's channel with it (blocking)."""
        proxy = self.ledger.find_proxy(self.cfg.proxy)
        self.purse = WorkerPurse(self.ledger, self.wallet, proxy.address, self.vouchers,
                                 redeem_threshold=self.cfg.redeem_threshold_nanoton)
        self.redeemed_nanoton = self.purse.redeemed()

    @property
    def earned_nanoton(self) -> int:
        return self.purse.earned if self.purse else 0

    def accept(self, payout: Payout) -> None:
        if self.purse is None:
            return
        try:
            difference = self.purse.accept(payout.voucher, payout.fee_nanoton)
        except VoucherError as exc:
            self.refused_vouchers += 1
            log.error("refused a payout voucher", extra={"fields": {"reason": str(exc)}})
            return
        if difference:
            log.info("a payout voucher covers earlier requests too", extra={"fields": {"nanoton": difference}})

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.chain_poll_s)
            try:
                await asyncio.to_thread(self.redeem, False)
            except Exception:  # a background loop must outlive any one failed round: the next one retries
                log.exception("redeeming failed")

    def redeem(self, force: bool) -> None:
        if self.purse is None:
            return
        if self.purse.redeem_if_due(force=force) is not None:
            log.info("redeemed the payout voucher", extra={"fields": {"earned": self.purse.earned}})
        self.redeemed_nanoton = self.purse.redeemed()

    def close(self) -> None:
        self.vouchers.close()
        self.ledger.close()
