"""The root registry's owner operations, on any chain: prices and terms, allowed images and engines, proxy
registrations, the hand-over to another owner, each a message from the owner's wallet to the root (on TON a
standard wallet; on the local chain its own owner wallet). Several changes go out together (`submit_batch`: four
per wallet transfer on TON), so that every node re-checks its peers at the new version soon after; then the owner
signs the registry log's new head with its log key (ledger/translog.py): nodes trust a change only once a signed
head covers it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pytoniq_core import Address

from cocoon.config import Prices
from cocoon.ledger import layouts
from cocoon.ledger.base import (
    REGISTRY_ROLES,
    TON,
    LedgerError,
    RootParams,
    Terms,
    engine_entry,
    image_hash_hex,
    model_entry,
)
from cocoon.ledger.contracts import MIN_OP_VALUE, HashKind
from cocoon.ledger.onchain import Message, OnChainLedger
from cocoon.ledger.wallet import Wallet

REGISTER_VALUE = TON // 2  # sent with register_proxy; what the root does not use becomes the proxy's gas buffer
IMAGE_KINDS = {"proxy": HashKind.PROXY_IMAGE, "worker": HashKind.WORKER_IMAGE}


class RootOwner:
    def __init__(self, ledger: OnChainLedger, wallet: Wallet) -> None:
        """`wallet`: the root's owner (its get_owner); every operation here is refused by the root otherwise."""
        self.ledger = ledger
        self.wallet = wallet

    def set_params(self, prices: Prices, terms: Terms) -> RootParams:
        self._send([self._message("set_params", layouts.set_params(prices, terms))])
        return self.ledger.read_root()

    def set_allowed_images(self, role: str, hashes: Iterable[bytes | str]) -> RootParams:
        """Replace the image hashes (raw 32 bytes or hex) allowed for `role`: one root change per hash added or
        removed."""
        if role not in REGISTRY_ROLES:
            raise ValueError(f"the registry lists images for roles {list(REGISTRY_ROLES)}, not {role!r}")
        wanted = {image_hash_hex(h) for h in hashes}
        current = self.ledger.read_root().allowed_images(role)
        changes = [(h, False) for h in sorted(current - wanted)] + [(h, True) for h in sorted(wanted - current)]
        self._send([self._message("set_hash", layouts.set_hash(IMAGE_KINDS[role], bytes.fromhex(h), present))
                    for h, present in changes])
        return self.ledger.read_root()

    def allow_engine(self, model: str, origin: str, allowed: bool = True) -> RootParams:
        """Let workers serve `model` from an engine outside their image at `origin` (`scheme://host:port`), or
        stop letting them."""
        entry = bytes.fromhex(engine_entry(model, origin))
        self._send([self._message("set_hash", layouts.set_hash(HashKind.MODEL, entry, allowed))])
        return self.ledger.read_root()

    def allow_model(self, model: str, weights_sha256: str, allowed: bool = True) -> RootParams:
        """Let workers serve `model` from the weights with this SHA-256 (hex), or stop letting them."""
        entry = bytes.fromhex(model_entry(model, image_hash_hex(weights_sha256)))
        self._send([self._message("set_hash", layouts.set_hash(HashKind.MODEL, entry, allowed))])
        return self.ledger.read_root()

    def register_proxy(self, owner: str, pubkey: bytes, endpoint: str) -> str:
        """Deploy the contract of the proxy instance with voucher key `pubkey`, owned by wallet `owner`; its
        address."""
        address = self.ledger.proxy_address(owner, pubkey)
        self._send([self._message("register_proxy", layouts.register_proxy(Address(owner), pubkey, endpoint),
                                  REGISTER_VALUE)])
        if not self.ledger.is_active(address):
            raise LedgerError(f"register_proxy did not deploy {address}")
        return address

    def hand_over(self, owner: str, log_key: bytes) -> None:
        """Hand the registry to wallet `owner`, whose key `log_key` signs the registry log from then on: only it
        can change the registry, and the log's head stays unsigned until it signs it (`sign_head`)."""
        self._send([self._message("set_log_key", layouts.set_log_key(log_key)),
                    self._message("set_owner", layouts.set_owner(Address(owner)))], sign=False)

    def sign_head(self) -> None:
        """Vouch for the registry log as it stands (the owner's key must be the log key the root holds)."""
        self.ledger.sign_registry_head(self.wallet)

    def _message(self, what: str, body: Any, value: int = MIN_OP_VALUE) -> Message:
        return Message(what, self.ledger.root, value, body)

    def _send(self, messages: list[Message], *, sign: bool = True) -> None:
        if not messages:
            return
        for result in self.ledger.submit_batch(self.wallet, messages):
            if isinstance(result, LedgerError):
                raise result
        if sign:
            self.sign_head()
