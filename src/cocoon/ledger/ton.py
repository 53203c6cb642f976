"""The `ton` ledger: the same contracts on real TON, reached through liteservers.

Each operation is the contracts' own message (onchain.py), sent from the party's deployed wallet v4r2 as a
signed external message. The liteserver list comes from a config file the operator provides (it is never
downloaded). `submit` returns once a liteserver accepted the external message: the chain executes it within
seconds, and its outcome (and fees) are seen by reading the contracts afterwards, so `Outcome.fees` is None.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pytoniq_core import Address, Cell, begin_cell
from pytoniq_core.tlb.transaction import ExternalMsgInfo

from cocoon.ledger import layouts
from cocoon.ledger.base import LedgerError, Outcome, RootParams
from cocoon.ledger.onchain import Message, OnChainLedger
from cocoon.ledger.wallet import Wallet

DEFAULT_WALLET_ID = 698983191  # wallet v4r2's subwallet id on the basechain
SEND_MODE = 3  # pay forwarding fees from the wallet's balance, ignore errors in the action phase
MESSAGE_TTL_S = 60  # a signed external message expires then: a replay later is refused by the wallet
T = TypeVar("T")


class Transport(Protocol):
    def run_get(self, address: str, method: str, stack: list[Any]) -> list[Any]: ...

    def is_active(self, address: str) -> bool: ...

    def balance(self, address: str) -> int: ...

    def send_boc(self, boc: bytes) -> None: ...


def wallet_v4_transfer(wallet: Wallet, seqno: int, messages: list[Cell], *, valid_until: int,
                       wallet_id: int = DEFAULT_WALLET_ID) -> Cell:
    """The external message that makes wallet v4r2 at `wallet.address` send `messages` (internal messages):

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
    return layouts.message_cell(info.serialize(), body, None)


class TonLedger(OnChainLedger):
    def __init__(self, root: str, transport: Transport, *, sync_s: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(root)
        self._transport = transport
        self._clock = clock
        self._cached = self.read_root()
        self._sync_s = sync_s
        self._stop = threading.Event()
        self._sync = threading.Thread(target=self._sync_loop, name="ton-root-sync", daemon=True)
        self._sync.start()

    def _sync_loop(self) -> None:
        # The registry view is re-read in the background: attestation checks read the cache, never the network.
        while not self._stop.wait(self._sync_s):
            try:
                self._cached = self.read_root()
            except Exception:  # a liteserver hiccup: keep the last view, try again next round
                continue

    def root_params(self) -> RootParams:
        return self._cached

    def refresh(self) -> RootParams:
        return self._cached

    def submit(self, wallet: Wallet, message: Message) -> Outcome:
        (seqno,) = self.run_get(wallet.address, "seqno")
        internal = layouts.internal_message(None, Address(message.dest), message.value, message.body,
                                            message.init, message.bounce)
        external = wallet_v4_transfer(wallet, seqno, [internal], valid_until=int(self._clock()) + MESSAGE_TTL_S)
        self._transport.send_boc(external.to_boc())
        return Outcome(fees=None)

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

    def send_boc(self, boc: bytes) -> None:
        self._call(self._client.raw_send_message(boc))

    def close(self) -> None:
        self._call(self._client.close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
