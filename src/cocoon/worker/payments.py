"""The worker's money: the payout vouchers its proxy signs after each request (kept, checked), redeemed on chain
once enough has accumulated to be worth the fees (`redeem_threshold_nanoton`). Chain operations run in threads.
"""

from __future__ import annotations

import asyncio
import logging

from cocoon.config import WorkerConfig
from cocoon.ledger.devnet import vouchers_path
from cocoon.ledger.network import open_ledger
from cocoon.ledger.purse import WorkerPurse
from cocoon.ledger.vouchers import VoucherBook, VoucherError
from cocoon.nodekeys import NodeKeys
from cocoon.wire.messages import Payout

log = logging.getLogger(__name__)


class WorkerPayments:
    def __init__(self, cfg: WorkerConfig) -> None:
        state = cfg.state_path
        self.cfg = cfg
        self.ledger = open_ledger(cfg)  # on the network its config names (or it refuses to start)
        self.wallet = NodeKeys("worker", cfg).wallet()  # sealed to this worker's role, image and name
        self.vouchers = VoucherBook(vouchers_path(state, cfg.name))
        self._redeemed: dict[str, int] = {}  # what each channel has redeemed, as last read
        self.purses: dict[str, WorkerPurse] = {}  # by proxy address (host:port): one channel per proxy served
        self.refused_vouchers = 0

    def open(self, address: str) -> None:
        """Find the contract of the proxy registered at `address` and this worker's channel with it (blocking;
        LedgerError if no proxy is registered there)."""
        if address in self.purses:
            return
        proxy = self.ledger.find_proxy(address)
        purse = WorkerPurse(self.ledger, self.wallet, proxy.address, self.vouchers,
                            redeem_threshold=self.cfg.redeem_threshold_nanoton)
        self._redeemed[address] = purse.redeemed()
        self.purses[address] = purse

    @property
    def earned_nanoton(self) -> int:
        return sum(p.earned for p in list(self.purses.values()))

    @property
    def redeemed_nanoton(self) -> int:
        return sum(self._redeemed[a] for a in list(self.purses))  # open() sets both, redeemed first

    def accept(self, address: str, payout: Payout) -> None:
        purse = self.purses.get(address)
        if purse is None:
            return
        try:
            difference = purse.accept(payout.voucher, payout.fee_nanoton)
        except VoucherError as exc:
            self.refused_vouchers += 1
            log.error("refused a payout voucher", extra={"fields": {"proxy": address, "reason": str(exc)}})
            return
        if difference:
            log.info("a payout voucher covers earlier requests too", extra={"fields": {"proxy": address,
                                                                                      "nanoton": difference}})

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.chain_poll_s)
            try:
                await asyncio.to_thread(self.redeem, False)
            except Exception:  # a background loop must outlive any one failed round: the next one retries
                log.exception("redeeming failed")

    def redeem(self, force: bool) -> None:
        for address, purse in list(self.purses.items()):
            if purse.redeem_if_due(force=force) is not None:
                log.info("redeemed the payout voucher", extra={"fields": {"proxy": address, "earned": purse.earned}})
            self._redeemed[address] = purse.redeemed()

    def close(self) -> None:
        self.vouchers.close()
        self.ledger.close()
