"""The `local` ledger: cocoon's contracts deployed on a LocalChain (one SQLite file, TVM-executed).

Opening a file that holds no chain yet creates one (genesis): an owner wallet and the root registry, deployed with
the given prices and terms. The owner's key is kept out of the chain file, in `<chain>.owner-key` next to it (0600):
whoever only reads the chain (a copy, a backup) cannot act as the owner. Every process that opens the same file
sees the same chain. Minting, like any change to the file itself, is open to whoever can write it: it is a test
network.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pytoniq_core import Address

from cocoon.config import Prices
from cocoon.fsutil import SECRET_MODE, create_once
from cocoon.ledger import layouts
from cocoon.ledger.base import (
    TON,
    LedgerError,
    LedgerRefused,
    Outcome,
    RootParams,
    Terms,
)
from cocoon.ledger.chain import LocalChain, Receipt
from cocoon.ledger.contracts import code, describe_exit
from cocoon.ledger.onchain import Message, OnChainLedger
from cocoon.ledger.owner import RootOwner
from cocoon.ledger.tvm import Tvm
from cocoon.ledger.wallet import Wallet, raw_address

GENESIS_SUPPLY = 1_000_000 * TON  # minted to the owner wallet
ROOT_GAS = 1 * TON  # the root's own balance, for its gas and storage


class LocalLedger(OnChainLedger):
    def __init__(self, path: str | Path, *, default_prices: Prices | None = None, terms: Terms | None = None,
                 clock: Callable[[], float] = time.time, tvm: Tvm | None = None) -> None:
        """Open the chain in `path`; create it (genesis) with `default_prices` and `terms` if there is none."""
        self.path = Path(path)
        self.owner_key_path = owner_key_path(self.path)
        self.chain = LocalChain(self.path, clock=clock, tvm=tvm)
        created = False
        with self.chain.transaction():
            if self.chain.get_meta("root") is None:
                self._genesis(default_prices or Prices(), terms or Terms())
                created = True
        super().__init__(str(self.chain.get_meta("root")))
        root = self.chain.account(self.root)
        if root is None or root.code is None or root.code.hash != code("root").hash:
            self.chain.close()
            raise LedgerError(f"{self.path} holds a chain whose root runs other code than this version of cocoon's "
                              f"contracts (build/hashes.json): it was created by another version; move it away to "
                              f"start a new chain")
        self._move_owner_key_out()
        if created:  # the registry log's first entry is the genesis: the owner vouches for it at once
            with self.chain.transaction():
                self.sign_registry_head(self.owner)
        self._seen_lt = -1
        self._cached = self.refresh()

    @functools.cached_property
    def owner(self) -> Wallet:
        """The root owner's wallet (read only by whoever performs owner operations)."""
        try:
            return Wallet(self.owner_key_path.read_bytes())
        except FileNotFoundError:
            raise LedgerError(f"the local chain's owner key {self.owner_key_path} is missing: owner operations "
                              f"(prices, image hashes, proxy registration) are impossible on this chain") from None

    def _genesis(self, prices: Prices, terms: Terms) -> None:
        # a leftover key from a genesis that did not commit is reused: the chain's owner is whatever the file holds
        owner = Wallet(create_once(self.owner_key_path, os.urandom(32), SECRET_MODE))
        self.chain.open_wallet(owner)
        self.chain.mint(owner.address, GENESIS_SUPPLY)
        # the owner's key signs the registry log's tree heads (ledger/translog.py)
        init = layouts.state_init("root", layouts.root_data(Address(owner.address), prices, terms, owner.public_key))
        root = raw_address(layouts.address_of(init))
        # Deployed and configured by one message, as an owner would: the root's version is 1 from the start.
        receipt = self.chain.send(owner, layouts.internal_message(
            Address(owner.address), Address(root), ROOT_GAS, layouts.set_params(prices, terms), init))
        _check("deploy root", root, receipt)
        self.chain.set_meta("root", root)

    def _move_owner_key_out(self) -> None:
        """Chains written by older versions kept the owner's seed in the file: move it to its own file, then
        erase it from the chain's."""
        legacy = self.chain.get_meta("owner_seed")
        if legacy is None:
            return
        seed = bytes.fromhex(str(legacy))
        if create_once(self.owner_key_path, seed, SECRET_MODE) != seed:
            raise LedgerError(f"{self.path} holds an owner seed that differs from {self.owner_key_path}")
        self.chain.forget_meta("owner_seed")

    # ---- the registry: re-read only when the root contract ran a transaction ----
    def root_params(self) -> RootParams:
        return self._cached

    def refresh(self) -> RootParams:
        lt = self.chain.last_lt(self.root)
        if lt != self._seen_lt:
            self._cached, self._seen_lt = self.read_root(), lt
        return self._cached

    # ---- owner operations (ledger/owner.py): each change and the owner's signature over the registry log's
    # head that includes it in one chain transaction, all or nothing ----
    def root_owner(self) -> RootOwner:
        return RootOwner(self, self.owner)

    def set_prices(self, prices: Prices) -> RootParams:
        return self.set_params(prices, self.refresh().terms)

    def set_params(self, prices: Prices, terms: Terms) -> RootParams:
        with self.chain.transaction():
            self.root_owner().set_params(prices, terms)
        return self.refresh()

    def set_allowed_images(self, role: str, hashes: Iterable[bytes | str]) -> RootParams:
        """Replace the image hashes allowed for `role`, in one chain operation, so that every node re-checks its
        peers at the new version."""
        with self.chain.transaction():  # a refusal rolls back the changes before it
            self.root_owner().set_allowed_images(role, hashes)
        return self.refresh()

    def allow_engine(self, model: str, origin: str, allowed: bool = True) -> RootParams:
        with self.chain.transaction():
            self.root_owner().allow_engine(model, origin, allowed)
        return self.refresh()

    def allow_model(self, model: str, weights_sha256: str, allowed: bool = True) -> RootParams:
        with self.chain.transaction():
            self.root_owner().allow_model(model, weights_sha256, allowed)
        return self.refresh()

    def register_proxy(self, owner: str, pubkey: bytes, endpoint: str) -> str:
        with self.chain.transaction():
            address = self.root_owner().register_proxy(owner, pubkey, endpoint)
        self.refresh()
        return address

    # ---- a test network's privileges ----
    def fund(self, wallet: Wallet | str, amount: int) -> None:
        """Mint `amount` into a wallet (opened first when a Wallet is given)."""
        address = wallet if isinstance(wallet, str) else self.chain.open_wallet(wallet)
        self.chain.mint(address, amount)

    def advance(self, seconds: int) -> int:
        """Move chain time forward (close delays pass at once); the new chain time."""
        return self.chain.advance(seconds)

    # ---- OnChainLedger ----
    def submit(self, wallet: Wallet, message: Message) -> Outcome:
        self.chain.open_wallet(wallet)
        cell = layouts.internal_message(Address(wallet.address), Address(message.dest), message.value,
                                        message.body, message.init, message.bounce)
        receipt = self.chain.send(wallet, cell)
        _check(message.what, message.dest, receipt)
        return Outcome(fees=receipt.fees)

    def run_get(self, address: str, method: str, stack: list[Any] | None = None) -> list[Any]:
        return self.chain.get(address, method, stack)

    def is_active(self, address: str) -> bool:
        acc = self.chain.account(address)
        return acc is not None and acc.status == "active"

    def balance(self, address: str) -> int:
        return self.chain.balance(address)

    def wallet_key(self, address: str) -> bytes | None:
        return self.chain.wallet_key(address)

    def close(self) -> None:
        self.chain.close()


def owner_key_path(chain: Path) -> Path:
    """`ledger.sqlite` -> `ledger.owner-key`."""
    return chain.with_suffix(".owner-key")


def _check(what: str, dest: str, receipt: Receipt) -> None:
    """Raise LedgerRefused when the operation's target, or any contract its messages reached, refused it (after
    the chain recorded it: the fees for trying are spent, as on TON)."""
    failed = [t for t in receipt.transactions if t.exit_code is not None and not t.success]
    if failed:
        t = failed[0]
        raise LedgerRefused(what, t.address, t.exit_code, describe_exit(t.exit_code or 0))
    if receipt.first_on(dest).exit_code is None:
        raise LedgerError(f"{what}: there is no contract at {dest}; the message bounced")
