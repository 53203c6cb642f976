"""The client's and the worker's side of the money: their channel, the vouchers the proxy signed them (kept in a
VoucherBook), and the on-chain operations they start themselves. Methods block on the ledger: call them from a
thread on an event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from cocoon.ledger.base import TON, ChannelState, Ledger, Outcome
from cocoon.ledger.contracts import Tag
from cocoon.ledger.vouchers import Voucher, VoucherBook, VoucherError, describe, ton
from cocoon.ledger.wallet import Wallet


@dataclass(frozen=True)
class ChannelPolicy:
    """How a client funds its channel with a proxy (nanoTON)."""

    deposit: int = 10 * TON  # the first deposit, stake included
    stake: int = 5 * TON  # the most the proxy will let the client owe it before claiming on chain
    top_up_below: int = 2 * TON  # top up when the channel holds less than this beyond the unclaimed charges
    top_up_to: int = 10 * TON


class ClientPurse:
    def __init__(self, ledger: Ledger, wallet: Wallet, proxy: str, vouchers: VoucherBook,
                 policy: ChannelPolicy = ChannelPolicy(), nonce: int = 0) -> None:
        self.ledger = ledger
        self.wallet = wallet
        self.proxy = proxy
        self.vouchers = vouchers
        self.policy = policy
        self.channel = ledger.client_channel_address(proxy, wallet.address, nonce)
        self._proxy_key = ledger.proxy_key(proxy)

    def state(self) -> ChannelState:
        return self.ledger.channel_state(self.channel)

    def ensure_open(self) -> ChannelState:
        """Open and fund the channel if it was never opened; its state."""
        state = self.state()
        if state.state == "new":
            self.ledger.open_channel(self.wallet, self.proxy, self.policy.deposit, self.policy.stake)
            state = self.state()
        return state

    @property
    def charged(self) -> int:
        """What the proxy has charged so far (its latest voucher), settled on chain or not."""
        latest = self.vouchers.latest(self.channel, Tag.CHARGE)
        return latest.amount if latest else 0

    def remaining(self, state: ChannelState | None = None) -> int:
        """What the channel still holds for new requests: its balance less the charges not yet claimed."""
        state = state or self.state()
        return state.balance - (self.charged - state.charged)

    def top_up_if_low(self) -> Outcome | None:
        """Deposit up to `top_up_to` (and restore the stake) when the channel runs below `top_up_below`."""
        state = self.state()
        if state.state != "open":
            return None
        left = self.remaining(state)
        if left >= self.policy.top_up_below:
            return None
        amount = self.policy.top_up_to - left
        # claims eat into the stake once the balance goes below it: raise it back to the configured stake
        return self.ledger.deposit(self.wallet, self.channel, amount, max(self.policy.stake - state.stake, 0))

    def accept(self, voucher: Voucher, cost: int) -> Voucher:
        """Keep the proxy's voucher for an answer that cost `cost`: it must add exactly that to the last one."""
        expected = self.charged + cost
        if voucher.tag != Tag.CHARGE or voucher.amount != expected:
            raise VoucherError(f"{describe(voucher)}: expected a charge voucher for {ton(expected)} TON "
                               f"(the last one plus this answer's {ton(cost)} TON)")
        return self.vouchers.accept(voucher, self._proxy_key, contract=self.channel)


class WorkerPurse:
    def __init__(self, ledger: Ledger, wallet: Wallet, proxy: str, vouchers: VoucherBook,
                 redeem_threshold: int = 1 * TON) -> None:
        """`redeem_threshold`: redeem once this much is unredeemed (a redeem costs ~0.0069 TON in fees)."""
        self.ledger = ledger
        self.wallet = wallet
        self.proxy = proxy
        self.vouchers = vouchers
        self.redeem_threshold = redeem_threshold
        self.channel = ledger.worker_channel_address(proxy, wallet.address)
        self._proxy_key = ledger.proxy_key(proxy)

    @property
    def earned(self) -> int:
        latest = self.vouchers.latest(self.channel, Tag.PAYOUT)
        return latest.amount if latest else 0

    def redeemed(self) -> int:
        return self.ledger.worker_channel_state(self.channel).paid

    def accept(self, voucher: Voucher, fee: int) -> Voucher:
        """Keep a payout voucher for a request that earned `fee`: it must add exactly that to the last one."""
        expected = self.earned + fee
        if voucher.tag != Tag.PAYOUT or voucher.amount != expected:
            raise VoucherError(f"{describe(voucher)}: expected a payout voucher for {ton(expected)} TON "
                               f"(the last one plus this request's {ton(fee)} TON)")
        return self.vouchers.accept(voucher, self._proxy_key, contract=self.channel)

    def redeem_if_due(self, *, force: bool = False) -> Outcome | None:
        """Redeem the latest voucher when the unredeemed part reached the threshold (or anything, with force)."""
        latest = self.vouchers.latest(self.channel, Tag.PAYOUT)
        if latest is None:
            return None
        unredeemed = latest.amount - self.redeemed()
        if unredeemed <= 0 or (unredeemed < self.redeem_threshold and not force):
            return None
        return self.ledger.redeem(self.wallet, self.proxy, latest)
