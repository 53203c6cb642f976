"""The client's and the worker's side of the money: their channel, the vouchers the proxy signed them (kept in a
VoucherBook), and the on-chain operations they start themselves. Methods block on the ledger: call them from a
thread on an event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from cocoon.ledger.base import ChannelState, Ledger, Outcome
from cocoon.ledger.contracts import Tag
from cocoon.ledger.vouchers import Voucher, VoucherBook, VoucherError, describe
from cocoon.ledger.wallet import Wallet


@dataclass(frozen=True)
class ChannelPolicy:
    """How a client funds its channel with a proxy (nanoTON), as its configuration says (ClientConfig)."""

    deposit: int  # the first deposit, stake included
    stake: int  # the most the proxy will let the client owe it before claiming on chain
    top_up_below: int  # top up when the channel holds less than this beyond the unclaimed charges
    top_up_to: int


class ClientPurse:
    def __init__(self, ledger: Ledger, wallet: Wallet, proxy: str, vouchers: VoucherBook,
                 policy: ChannelPolicy | None = None, nonce: int | None = None) -> None:
        """`nonce` None: the first channel with this proxy that is not closed (a closed one cannot reopen).
        `policy` None: a purse that keeps vouchers and reads its channel, but never opens or tops it up (the ledger
        CLI)."""
        self.ledger = ledger
        self.wallet = wallet
        self.proxy = proxy
        self.vouchers = vouchers
        self.policy = policy
        if nonce is None:
            nonce = 0
            while ledger.channel_state(ledger.client_channel_address(proxy, wallet.address, nonce)).state == "closed":
                nonce += 1
        self.nonce = nonce
        self.channel = ledger.client_channel_address(proxy, wallet.address, nonce)
        self._proxy_key = ledger.proxy_key(proxy)
        self._global_id = ledger.global_id()

    def proof(self, tls_key: bytes) -> bytes:
        """The wallet's signature binding this channel to the client's RA-TLS key (see `verify_channel_proof`)."""
        return self.wallet.sign(channel_claim(self.channel, tls_key))

    def state(self) -> ChannelState:
        return self.ledger.channel_state(self.channel)

    def ensure_open(self) -> ChannelState:
        """Open and fund the channel if it was never opened; its state."""
        state = self.state()
        if state.state == "new":
            policy = self._policy()
            self.ledger.open_channel(self.wallet, self.proxy, policy.deposit, policy.stake, self.nonce)
            state = self.state()
        return state

    def latest(self) -> Voucher | None:
        """The proxy's newest charge voucher kept."""
        return self.vouchers.latest(self.channel, Tag.CHARGE)

    @property
    def charged(self) -> int:
        """What the proxy has charged so far (its latest voucher), settled on chain or not."""
        latest = self.latest()
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
        policy = self._policy()
        left = self.remaining(state)
        if left >= policy.top_up_below:
            return None
        amount = policy.top_up_to - left
        # claims eat into the stake once the balance goes below it: raise it back to the configured stake
        return self.ledger.deposit(self.wallet, self.channel, amount, max(policy.stake - state.stake, 0))

    def _policy(self) -> ChannelPolicy:
        if self.policy is None:
            raise ValueError("this purse has no channel policy: it cannot open or top up its channel")
        return self.policy

    def keep(self, voucher: Voucher) -> bool:
        """Keep the proxy's charge voucher if it is the newest yet (True). One signed before the newest kept is
        superseded (False): answers, each with its voucher, end in another order than the proxy settled them.
        Raises VoucherError for a voucher that is invalid or inconsistent with the one kept. Whether the charges
        are explained by the answers received is the caller's check (client/audit.py)."""
        if voucher.tag != Tag.CHARGE:
            raise VoucherError(f"{describe(voucher)}: expected a charge voucher")
        return self.vouchers.keep_latest(voucher, self._proxy_key, global_id=self._global_id, contract=self.channel)


class WorkerPurse:
    def __init__(self, ledger: Ledger, wallet: Wallet, proxy: str, vouchers: VoucherBook, *,
                 redeem_threshold: int) -> None:
        """`redeem_threshold`: redeem once this much is unredeemed (a redeem costs ~0.0069 TON in fees; the
        worker's configuration says how much)."""
        self.ledger = ledger
        self.wallet = wallet
        self.proxy = proxy
        self.vouchers = vouchers
        self.redeem_threshold = redeem_threshold
        self.channel = ledger.worker_channel_address(proxy, wallet.address)
        self._proxy_key = ledger.proxy_key(proxy)
        self._global_id = ledger.global_id()

    @property
    def earned(self) -> int:
        latest = self.vouchers.latest(self.channel, Tag.PAYOUT)
        return latest.amount if latest else 0

    def redeemed(self) -> int:
        return self.ledger.worker_channel_state(self.channel).paid

    def accept(self, voucher: Voucher, fee: int) -> int:
        """Keep a newer payout voucher for a request that earned `fee`. Returns its difference to the last voucher
        plus `fee` (0: exactly this request's fee; more: payouts whose notice was lost on the way)."""
        if voucher.tag != Tag.PAYOUT:
            raise VoucherError(f"{describe(voucher)}: expected a payout voucher")
        difference = voucher.amount - (self.earned + fee)
        self.vouchers.accept(voucher, self._proxy_key, global_id=self._global_id, contract=self.channel)
        return difference

    def redeem_if_due(self, *, force: bool = False) -> Outcome | None:
        """Redeem the latest voucher when the unredeemed part reached the threshold (or anything, with force)."""
        latest = self.vouchers.latest(self.channel, Tag.PAYOUT)
        if latest is None:
            return None
        unredeemed = latest.amount - self.redeemed()
        if unredeemed <= 0 or (unredeemed < self.redeem_threshold and not force):
            return None
        return self.ledger.redeem(self.wallet, self.proxy, latest)


def channel_claim(channel: str, tls_key: bytes) -> bytes:
    """What a client's wallet signs to say "the peer with RA-TLS key `tls_key` pays through `channel`": without it,
    a client could name someone else's channel and have its requests charged there."""
    return b"cocoon-channel-claim:" + channel.encode() + b":" + tls_key


def verify_channel_proof(channel: str, tls_key: bytes, wallet_key: bytes, proof: bytes) -> None:
    """Raise VoucherError unless `wallet_key` signed the claim (the caller checks `wallet_key` owns the channel)."""
    try:
        VerifyKey(wallet_key).verify(channel_claim(channel, tls_key), proof)
    except (BadSignatureError, ValueError) as exc:
        raise VoucherError(f"the claim on channel {channel} is not signed by its wallet") from exc
