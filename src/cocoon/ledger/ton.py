"""The `ton` ledger: the same contracts on real TON (or `cocoon chain`, a devnet serving the same API), reached
through a transport: a toncenter-v2 HTTP API (`ledger/toncenter.py`) or liteservers (`LiteTransport`).

Each operation is the contracts' own message (onchain.py), sent from the party's standard wallet v4r2 as a signed
external message; the wallet's first operation deploys it (its StateInit rides along, seqno 0). A transport that
can find the outcome (toncenter) waits for the wallet's transaction, found by the external message's hash, and for
every transaction the message caused: a contract's refusal raises LedgerRefused and the fees are read from the
transactions. One that cannot (liteservers, for now) returns once the message was accepted: `Outcome.fees` is None.

Why resending is safe and re-signing is not: an external message is accepted at most once, because the wallet
checks its seqno (then increments it) and its `valid_until`. The same bytes sent twice execute once; a message
not seen by `valid_until` never executes. A new message signed after an unknown outcome (with the seqno read again)
could execute the operation twice, so nothing here re-signs: an unknown outcome is an error naming the message.
The liteserver list comes from a config file the operator provides (it is never downloaded).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pytoniq_core import Address, Cell, begin_cell
from pytoniq_core.tlb.account import StateInit
from pytoniq_core.tlb.custom.wallet import WalletV4Data
from pytoniq_core.tlb.transaction import ExternalMsgInfo

from cocoon.ledger import layouts
from cocoon.ledger.base import LedgerError, LedgerRefused, Outcome, RootParams
from cocoon.ledger.contracts import describe_exit
from cocoon.ledger.onchain import Message, OnChainLedger
from cocoon.ledger.wallet import Wallet

DEFAULT_WALLET_ID = 698983191  # wallet v4r2's subwallet id on the basechain
SEND_MODE = 3  # pay forwarding fees from the wallet's balance, ignore errors in the action phase
MESSAGE_TTL_S = 60  # a signed external message expires then: a replay later is refused by the wallet
# The standard wallet v4r2's code hash (base64 /rX/aCDi/w2Ug+fg1iyBfYRniftK5YDIeIZtlZ2r1cA=): checked against
# the code pytoniq ships, so that what is deployed is the well-known contract.
WALLET_V4R2_CODE_HASH = "feb5ff6820e2ff0d9483e7e0d62c817d846789fb4ae580c878866d959dabd5c0"
T = TypeVar("T")


@dataclass(frozen=True)
class SeenTx:
    """One transaction of an operation's trace, as read from the chain."""

    address: str
    lt: int
    exit_code: int | None  # the compute phase's; None when it was skipped (no code ran)
    aborted: bool
    fees: int  # the transaction's total fees plus its inbound message's forwarding fee
    branch: int = -1  # which of the wallet's messages (0..3) caused it; -1: the wallet's own transaction

    @property
    def success(self) -> bool:
        return self.exit_code is None or (self.exit_code in (0, 1) and not self.aborted)


@dataclass(frozen=True)
class Trace:
    """Every transaction an external message caused, the wallet's first."""

    transactions: list[SeenTx]
    sent: int  # messages the wallet's transaction sent

    @property
    def fees(self) -> int:
        return sum(t.fees for t in self.transactions)


class Transport(Protocol):
    def run_get(self, address: str, method: str, stack: list[Any]) -> list[Any]: ...

    def is_active(self, address: str) -> bool: ...

    def balance(self, address: str) -> int: ...

    def send_boc(self, boc: bytes, *, dest: str, valid_until: int) -> Trace | None:
        """Send an external message to `dest`; its trace once executed, or None if this transport cannot see it."""


def wallet_v4r2_code() -> Cell:
    from pytoniq.contract.wallets.wallet import WALLET_V4_R2_CODE  # the library's copy of the standard code

    if WALLET_V4R2_CODE_HASH != WALLET_V4_R2_CODE.hash.hex():
        raise LedgerError(f"pytoniq's wallet v4r2 code hashes to {WALLET_V4_R2_CODE.hash.hex()}, not the standard "
                          f"{WALLET_V4R2_CODE_HASH}")
    return WALLET_V4_R2_CODE


def wallet_v4r2_init(public_key: bytes, wallet_id: int = DEFAULT_WALLET_ID) -> StateInit:
    data = WalletV4Data(seqno=0, wallet_id=wallet_id, public_key=public_key, plugins=None).serialize()
    return StateInit(code=wallet_v4r2_code(), data=data)


def wallet_v4r2_address(public_key: bytes, wallet_id: int = DEFAULT_WALLET_ID) -> str:
    """The basechain address of the standard wallet v4r2 of `public_key`."""
    return layouts.address_of(wallet_v4r2_init(public_key, wallet_id)).to_str(is_user_friendly=False)


def wallet_v4_transfer(wallet: Wallet, seqno: int, messages: list[Cell], *, valid_until: int,
                       wallet_id: int = DEFAULT_WALLET_ID, init: StateInit | None = None) -> Cell:
    """The external message that makes wallet v4r2 at `wallet.address` send `messages` (internal messages), with
    the wallet's StateInit when it is not deployed yet (`init`, seqno 0):

        signature:bits512 subwallet_id:uint32 valid_until:uint32 seqno:uint32 op:uint8 (0: send) {mode:uint8 ^msg}
    """
    if not 1 <= len(messages) <= 4:
        raise ValueError("wallet v4 sends one to four messages at a time")
    signed = begin_cell().store_uint(wallet_id, 32).store_uint(valid_until, 32).store_uint(seqno, 32).store_uint(0, 8)
    for msg in messages:
        signed.store_uint(SEND_MODE, 8).store_ref(msg)
    to_sign = signed.end_cell()
    body = begin_cell().store_bytes(wallet.sign(to_sign.hash)).store_cell(to_sign).end_cell()
    info = ExternalMsgInfo(src=None, dest=Address(wallet.address), import_fee=0)
    return layouts.message_cell(info.serialize(), body, init)


class TonLedger(OnChainLedger):
    def __init__(self, root: str, transport: Transport, *, sync_s: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(root)
        self._transport = transport
        self._clock = clock
        if not transport.is_active(self.root):
            raise LedgerError(f"there is no active contract at root {self.root} on this chain: the config's `root` "
                              f"names no cocoon registry here")
        self._cached = self.read_root()
        self._sync_s = sync_s
        self._stop = threading.Event()
        self._wallet_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._sync = threading.Thread(target=self._sync_loop, name="ton-root-sync", daemon=True)
        self._sync.start()

    def _sync_loop(self) -> None:
        # The registry view is re-read in the background: attestation checks read the cache, never the network.
        # One get-method a round (the version); the whole registry only when it moved.
        while not self._stop.wait(self._sync_s):
            try:
                (version,) = self.run_get(self.root, "get_version")
                if version != self._cached.version:
                    self._cached = self.read_root()
            except Exception:  # a chain API hiccup: keep the last view, try again next round
                continue

    def root_params(self) -> RootParams:
        return self._cached

    def refresh(self) -> RootParams:
        return self._cached

    def reload(self) -> RootParams:
        """Read the registry now (after an owner operation), not at the next background round."""
        self._cached = self.read_root()
        return self._cached

    def _lock(self, address: str) -> threading.Lock:
        with self._locks_lock:
            return self._wallet_locks.setdefault(address, threading.Lock())

    def submit(self, wallet: Wallet, message: Message) -> Outcome:
        (result,) = self.submit_batch(wallet, [message])
        if isinstance(result, LedgerError):
            raise result
        return result

    def submit_batch(self, wallet: Wallet, messages: list[Message]) -> list[Outcome | LedgerError]:
        """Up to four messages per signed transfer (what wallet v4r2 sends at once): one external message, one
        wallet transaction, one seqno, for up to four operations. Each message's outcome is read from the
        transactions it caused (its branch of the trace); the wallet's own transaction's fees are shared out
        among the messages it sent (the first takes the remainder), so the outcomes' fees add up to the trace's."""
        out: list[Outcome | LedgerError] = []
        for start in range(0, len(messages), 4):
            out.extend(self._transfer(wallet, messages[start:start + 4]))
        return out

    def _transfer(self, wallet: Wallet, messages: list[Message]) -> list[Outcome | LedgerError]:
        # one signer per wallet at a time: two transfers signed with the same seqno would see one dropped, and
        # its sender wait for an outcome that never comes
        with self._lock(wallet.address):
            init = None
            if self.is_active(wallet.address):
                (seqno,) = self.run_get(wallet.address, "seqno")
            else:  # the wallet's first operation deploys it
                seqno, init = 0, wallet_v4r2_init(wallet.public_key)
                if layouts.address_of(init).to_str(is_user_friendly=False) != wallet.address:
                    raise LedgerError(f"wallet {wallet.address} is not deployed, and it is not the standard wallet "
                                      f"v4r2 of its key ({wallet_v4r2_address(wallet.public_key)}): cannot deploy it")
            internals = [layouts.internal_message(None, Address(m.dest), m.value, m.body, m.init, m.bounce)
                         for m in messages]
            # from the later of this machine's clock and the chain's (as the wallet's state just showed it): a node
            # whose clock lags, or a devnet whose time was moved forward, still signs what the wallet accepts
            valid_until = int(max(self._clock(), getattr(self._transport, "chain_now", 0))) + MESSAGE_TTL_S
            external = wallet_v4_transfer(wallet, seqno, internals, valid_until=valid_until, init=init)
            trace = self._transport.send_boc(external.to_boc(), dest=wallet.address, valid_until=valid_until)
        if trace is None:
            return [Outcome(fees=None) for _ in messages]
        what = ", ".join(m.what for m in messages)
        if trace.sent < len(messages):
            return [LedgerError(f"{what}: wallet {wallet.address} sent {trace.sent} of {len(messages)} messages "
                                f"(its balance {self.balance(wallet.address)} nanoTON may not cover "
                                f"{sum(m.value for m in messages)} and the fees)") for _ in messages]
        own = sum(t.fees for t in trace.transactions if t.branch < 0)
        share, rest = divmod(own, len(messages))
        out: list[Outcome | LedgerError] = []
        for i, message in enumerate(messages):
            branch = [t for t in trace.transactions if t.branch == i]
            failed = [t for t in branch if not t.success]
            if failed:
                t = failed[0]
                out.append(LedgerRefused(message.what, t.address, t.exit_code, describe_exit(t.exit_code or 0)))
            elif not any(t.address == message.dest and t.exit_code is not None for t in branch):
                out.append(LedgerError(f"{message.what}: there is no contract at {message.dest}; the message "
                                       f"bounced"))
            else:
                out.append(Outcome(fees=sum(t.fees for t in branch) + share + (rest if i == 0 else 0)))
        return out

    def run_get(self, address: str, method: str, stack: list[Any] | None = None) -> list[Any]:
        return self._transport.run_get(address, method, stack or [])

    def is_active(self, address: str) -> bool:
        return self._transport.is_active(address)

    def balance(self, address: str) -> int:
        return self._transport.balance(address)

    def wallet_key(self, address: str) -> bytes | None:
        try:
            (key,) = self.run_get(address, "get_public_key")  # wallet v3/v4 answer it
        except Exception:  # not a wallet (or not deployed): no key to check against
            return None
        return int(key).to_bytes(32, "big")

    def close(self) -> None:
        self._stop.set()
        # a sync round in progress finishes before the transport (and what it reads) goes away: closing under it
        # crashed the process once (SQLite read on a closed local chain, in a test)
        if self._sync is not threading.current_thread():
            self._sync.join(timeout=30)
        close = getattr(self._transport, "close", None)
        if close is not None:
            close()


class LiteTransport:
    """pytoniq's liteserver balancer on a private event loop thread, so the Ledger's blocking interface holds."""

    def __init__(self, config_path: str | Path, *, timeout_s: int = 10) -> None:
        from pytoniq import LiteBalancer  # imported here: only an operator on real TON needs it

        try:
            config = json.loads(Path(config_path).read_text())
        except (OSError, ValueError) as exc:
            raise LedgerError(f"liteserver config {config_path}: {exc}") from exc
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="ton-liteclient", daemon=True).start()
        self._client = LiteBalancer.from_config(config, trust_level=2, timeout=timeout_s)
        self._call(self._client.start_up())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def run_get(self, address: str, method: str, stack: list[Any]) -> list[Any]:
        return self._call(self._client.run_get_method(address, method, stack))

    def is_active(self, address: str) -> bool:
        return self._call(self._client.get_account_state(address)).state.type_ == "active"

    def balance(self, address: str) -> int:
        return self._call(self._client.get_account_state(address)).balance

    def send_boc(self, boc: bytes, *, dest: str, valid_until: int) -> Trace | None:
        self._call(self._client.raw_send_message(boc))
        return None

    def close(self) -> None:
        self._call(self._client.close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
