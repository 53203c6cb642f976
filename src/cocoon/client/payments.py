"""The client's money: a funded payment channel with each of its proxies (opened at start, topped up when low) and
the charge vouchers the proxies sign, each checked against what the answer said it cost and kept.

Chain operations run in threads; checking and storing a voucher (a signature check and one SQLite write) is
done inline as each answer ends.
"""

from __future__ import annotations

import asyncio
import logging

from cocoon.config import ClientConfig
from cocoon.ledger.base import LedgerError
from cocoon.ledger.devnet import ledger_path, vouchers_path
from cocoon.ledger.local import LocalLedger
from cocoon.ledger.purse import ChannelPolicy, ClientPurse
from cocoon.ledger.vouchers import Voucher, VoucherBook, VoucherError
from cocoon.nodekeys import NodeKeys
from cocoon.wire.messages import ClientParams

log = logging.getLogger(__name__)


class ClientPayments:
    def __init__(self, cfg: ClientConfig, tls_key: bytes) -> None:
        state = cfg.state_path
        self.cfg = cfg
        self.tls_key = tls_key
        self.ledger = LocalLedger(ledger_path(state))
        self.wallet = NodeKeys("client", cfg).wallet()  # sealed to this client's role (and image) and name
        self.vouchers = VoucherBook(vouchers_path(state, cfg.name))
        self.policy = ChannelPolicy(deposit=cfg.deposit_nanoton, stake=cfg.stake_nanoton,
                                    top_up_below=cfg.top_up_below_nanoton, top_up_to=cfg.top_up_to_nanoton)
        self.purses: dict[str, ClientPurse] = {}  # by proxy address (host:port)
        self.balance_nanoton = 0  # what the channels still hold for new requests, as last read
        self.refused_vouchers = 0
        self.unexplained_nanoton = 0  # charged by vouchers beyond the costs of the answers this client received

    def open(self) -> None:
        """Open and fund a channel with every configured proxy registered in the root (blocking)."""
        for address in self.cfg.proxy_addresses:
            try:
                proxy = self.ledger.find_proxy(address)
            except LedgerError as exc:
                log.warning("no payment channel with this proxy", extra={"fields": {"proxy": address,
                                                                                    "reason": str(exc)}})
                continue
            purse = ClientPurse(self.ledger, self.wallet, proxy.address, self.vouchers, self.policy)
            state = purse.ensure_open()
            self.purses[address] = purse
            log.info("payment channel open", extra={"fields": {"proxy": address, "channel": purse.channel,
                                                               "balance": state.balance, "stake": state.stake}})
        self._refresh()

    def client_params(self, address: str) -> ClientParams:
        purse = self.purses.get(address)
        if purse is None:
            return ClientParams(owner=self.wallet.address, wallet_key=self.wallet.public_key)
        return ClientParams(owner=self.wallet.address, channel=purse.channel, nonce=purse.nonce,
                            wallet_key=self.wallet.public_key, proof=purse.proof(self.tls_key))

    def accept(self, voucher: Voucher | None, cost: int) -> None:
        """Keep the voucher that came with an answer costing `cost`; an invalid or older one is logged and counted,
        never kept; one charging more than the answers it covers is kept (it is the proxy's latest signature, and
        cumulative) and the excess reported."""
        if voucher is None:
            return
        purse = next((p for p in self.purses.values() if p.channel == voucher.contract), None)
        try:
            if purse is None:
                raise VoucherError(f"a voucher for {voucher.contract}, which is none of this client's channels")
            excess = purse.accept(voucher, cost)
        except VoucherError as exc:
            self.refused_vouchers += 1
            log.error("refused a voucher from the proxy", extra={"fields": {"reason": str(exc)}})
            return
        if excess:
            self.unexplained_nanoton += excess
            log.warning("a voucher charges more than this answer's cost", extra={"fields": {
                "channel": voucher.contract, "excess_nanoton": excess}})

    @property
    def charged_nanoton(self) -> int:
        return sum(p.charged for p in self.purses.values())

    async def run(self) -> None:
        """Top channels up when they run low; keep the balance figure fresh."""
        while True:
            await asyncio.sleep(self.cfg.chain_poll_s)
            try:
                await asyncio.to_thread(self._top_up)
            except Exception:  # a background loop must outlive any one failed round: the next one retries
                log.exception("channel top-up failed")

    def _top_up(self) -> None:
        for address, purse in self.purses.items():
            if purse.top_up_if_low() is not None:
                log.info("topped up the payment channel", extra={"fields": {"proxy": address}})
        self._refresh()

    def _refresh(self) -> None:
        self.balance_nanoton = sum(p.remaining() for p in self.purses.values())

    def close(self) -> None:
        self.vouchers.close()
        self.ledger.close()
