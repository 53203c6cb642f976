"""A devnet's chain: cocoon's contracts and standard wallets on a LocalChain in its own directory, advanced in
blocks.

- State: `STATE_DIR/chain.sqlite` (a LocalLedger: the chain, and at genesis the root registry with its owner's key
  in `chain.owner-key`), `STATE_DIR/faucet.key` (the faucet's wallet seed, 0600).
- Blocks: `produce_block` executes what was submitted since the last one, in order, each message (and everything
  it causes) as one chain operation, then counts the block (`seqno`, kept in the chain file). Nothing executes
  between blocks.
- External messages (`submit`) are what wallets receive: the only messages a party may send, as on TON. One is
  queued only if its destination would accept it now (a dry run, rolled back), and once per hash; at its block it
  may still be refused (another message used the seqno first): it is then dropped, as a validator would.
- The faucet mints coins into its own plain wallet and sends them, in a message that does not bounce, to the
  address asked for (deployed or not: an address with no contract keeps the coins until its StateInit arrives).
  Minting is counted, so the chain's audit still balances.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from pytoniq_core import Address, Cell, begin_cell
from pytoniq_core.tlb.transaction import ExternalMsgInfo, MessageAny

from cocoon.fsutil import SECRET_MODE, create_once, private_dir
from cocoon.ledger import layouts
from cocoon.ledger.base import TON, LedgerError
from cocoon.ledger.local import LocalLedger
from cocoon.ledger.ton import wallet_v4r2_address
from cocoon.ledger.tvm import TvmError
from cocoon.ledger.wallet import Wallet, raw_address

CHAIN_FILE = "chain.sqlite"
FAUCET_KEY = "faucet.key"
MAX_FAUCET = 1_000_000 * TON  # per request: a test network's coins, but not an overflow
MAX_PENDING = 10_000  # messages waiting for the next block

log = logging.getLogger("cocoon.chain")


class DevnetError(Exception):
    """A submission the devnet refuses; `code` is the HTTP status its API answers with (toncenter's)."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class FaucetResult:
    address: str
    amount: int
    lt: int
    balance: int


@dataclass
class _Pending:
    hash: bytes
    cell: Cell | None = None  # an external message
    faucet: tuple[str, int] | None = None  # (address, amount)
    done: Future[FaucetResult] = field(default_factory=Future)


class _DryRun(Exception):
    """Raised inside a chain transaction to roll back what a dry run did."""


class Devnet:
    def __init__(self, state_dir: Path, *, owner_key: bytes | None = None) -> None:
        """`owner_key`: the public key whose standard wallet v4r2 owns the root registry and whose key signs its
        log: handed over from the genesis owner on the first start that names it; a chain whose registry another
        wallet owns refuses it."""
        state_dir = private_dir(state_dir)
        self.ledger = LocalLedger(state_dir / CHAIN_FILE)
        self.chain = self.ledger.chain
        self.faucet = Wallet(create_once(state_dir / FAUCET_KEY, os.urandom(32), SECRET_MODE))
        self.chain.open_wallet(self.faucet)
        if owner_key is not None:
            self._hand_over(owner_key)
        self._pending: list[_Pending] = []
        self._lock = threading.Lock()
        self.dropped = 0  # messages refused at their block

    @property
    def root(self) -> str:
        return self.ledger.root

    def seqno(self) -> int:
        """The last block's number (0: none produced yet)."""
        return int(self.chain.get_meta("block") or 0)

    def _hand_over(self, key: bytes) -> None:
        owner = wallet_v4r2_address(key)
        current = self.ledger.root_owner_address()
        if current == owner:
            return
        if current != self.ledger.owner.address:
            self.ledger.close()
            raise LedgerError(f"the registry of this chain is owned by {current}, not {owner}")
        with self.chain.transaction():
            self.ledger.root_owner().hand_over(owner, key)

    # ---- submissions ----
    def submit(self, boc: bytes) -> bytes:
        """Queue an external message for the next block; its hash. DevnetError if it is not one, or if its
        destination would not accept it now."""
        try:
            cell = Cell.one_from_boc(boc)
            msg = MessageAny.deserialize(cell.begin_parse())
        except Exception as exc:  # pytoniq raises bare exceptions on malformed BOCs
            raise DevnetError(f"boc is not a serialized message: {str(exc)[:200]}") from None
        if not isinstance(msg.info, ExternalMsgInfo) or not isinstance(msg.info.dest, Address):
            raise DevnetError("only external inbound messages can be sent: internal ones are sent by contracts")
        dest = raw_address(msg.info.dest)
        if self.chain.is_wallet(dest):
            raise DevnetError(f"{dest} is the faucet's or the registry owner's account, which runs no code")
        with self._lock:
            if any(p.hash == cell.hash for p in self._pending):
                return cell.hash  # the same bytes again: once is enough
            if len(self._pending) >= MAX_PENDING:
                raise DevnetError("too many messages wait for the next block", 429)
        try:
            with self.chain.transaction():
                self.chain.deliver(cell)
                raise _DryRun
        except _DryRun:
            pass
        except (TvmError, LedgerError) as exc:
            # the words toncenter uses (from the liteserver), so that clients know the message was refused
            raise DevnetError(f"LITE_SERVER_UNKNOWN: cannot apply external message to current state : External "
                              f"message was not accepted: {str(exc)[:300]}", 500) from None
        with self._lock:
            self._pending.append(_Pending(cell.hash, cell=cell))
        return cell.hash

    def request_faucet(self, address: str, amount: int) -> Future[FaucetResult]:
        """Queue `amount` nanoTON for `address` at the next block."""
        try:
            address = raw_address(address)
        except ValueError as exc:
            raise DevnetError(str(exc), 422) from None
        if not 0 < amount <= MAX_FAUCET:
            raise DevnetError(f"a faucet amount is 1 to {MAX_FAUCET} nanoTON, not {amount}", 422)
        pending = _Pending(os.urandom(32), faucet=(address, amount))
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                raise DevnetError("too many messages wait for the next block", 429)
            self._pending.append(pending)
        return pending.done

    # ---- blocks ----
    def produce_block(self) -> int:
        """Execute everything submitted so far, then count the block; its number."""
        with self._lock:
            batch, self._pending = self._pending, []
        for item in batch:
            try:
                if item.faucet is not None:
                    item.done.set_result(self._pay(*item.faucet))
                else:
                    assert item.cell is not None
                    self.chain.deliver(item.cell)
            except (TvmError, LedgerError) as exc:
                self.dropped += 1
                log.info("message dropped at its block", extra={"fields": {"hash": item.hash.hex(),
                                                                           "reason": str(exc)[:200]}})
                if item.faucet is not None:
                    item.done.set_exception(exc)
        with self.chain.transaction():
            seqno = self.seqno() + 1
            self.chain.set_meta("block", seqno)
        return seqno

    def _pay(self, address: str, amount: int) -> FaucetResult:
        with self.chain.transaction():
            self.chain.mint(self.faucet.address, amount)
            receipt = self.chain.send(self.faucet, layouts.internal_message(
                Address(self.faucet.address), Address(address), amount, begin_cell().end_cell(), None, False))
        tx = receipt.first_on(address)
        return FaucetResult(address, amount, tx.lt, self.chain.balance(address))

    def close(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        for item in batch:
            if item.faucet is not None:
                item.done.set_exception(DevnetError("the devnet stopped", 503))
        self.ledger.close()
