"""A thin wrapper over pytvm's bundled TVM emulator: full transactions and get-methods on our compiled contracts.

One emulator per process, built from the bundled shared library's path (pytvm's own loader imports
`pkg_resources`, absent with new setuptools) with the sandbox's real blockchain config (an empty config aborts
the process). The library's handles are not thread-safe, so every call holds one lock.
"""

from __future__ import annotations

import base64
import ctypes
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytvm
from pytoniq_core import Address, Cell, Slice
from pytoniq_core.tlb import VmStack
from pytoniq_core.tlb.transaction import MessageAny, Transaction
from pytvm.engine import EmulatorEngineC
from pytvm.utils import get_method_id

from cocoon.core.errors import CocoonError
from cocoon.ledger.contracts import config_boc, config_with_global_id

_LIB = Path(pytvm.__file__).parent / "engine" / "libemulator-linux-x86_64.so"
_ZERO_SEED = "00" * 32


class TvmError(RuntimeError, CocoonError):
    """The emulator could not run at all (malformed account or message, an external message the contract did not
    accept), or a get-method exited with an error (`exit_code`), as opposed to a contract's refusal of a message."""

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class OutMessage:
    cell: Cell  # exactly as the transaction emitted it: what the destination receives
    message: MessageAny

    @property
    def dest(self) -> Address | None:
        dest = self.message.info.dest
        return dest if isinstance(dest, Address) else None


@dataclass(frozen=True)
class TxResult:
    shard_account: bytes  # BOC of the account after the transaction, in the layout this emulator reads back
    transaction: Transaction
    out_messages: list[OutMessage]
    boc: bytes = b""  # the transaction cell as the emulator made it (its hash is the transaction's)

    @property
    def lt(self) -> int:
        return self.transaction.lt

    @property
    def total_fees(self) -> int:
        return self.transaction.total_fees.grams

    @property
    def storage_fee(self) -> int:
        storage = self.transaction.description.storage_ph
        return storage.storage_fees_collected if storage is not None else 0

    @property
    def exit_code(self) -> int | None:
        """The compute phase's exit code; None when the compute phase was skipped (no code, no state)."""
        compute = self.transaction.description.compute_ph
        return compute.exit_code if compute.type_ == "vm" else None

    @property
    def aborted(self) -> bool:
        return bool(self.transaction.description.aborted)

    @property
    def success(self) -> bool:
        return self.exit_code in (0, 1) and not self.aborted


class Tvm:
    def __init__(self, config: bytes | None = None) -> None:
        engine = EmulatorEngineC(str(_LIB))
        # pytvm declares these 64-bit parameters as 32-bit: logical times past 2³² and balances past 4.29 TON
        # would be cut silently.
        engine.lib.transaction_emulator_set_lt.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
        engine.lib.tvm_emulator_set_c7.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32,
                                                   ctypes.c_uint64, ctypes.c_char_p, ctypes.c_char_p]
        engine.emulator_set_verbosity_level(0)
        self._engine = engine
        self._config_b64 = base64.b64encode(config or config_boc())
        self._emulator = engine.transaction_emulator_create(self._config_b64, 0)
        if not self._emulator:
            raise TvmError("the transaction emulator refused the blockchain config")
        self._lock = threading.Lock()

    def run_transaction(self, shard_account: bytes, message: Cell, *, now: int, lt: int) -> TxResult:
        """Deliver `message` to the account whose state is `shard_account` (BOC) at time `now`, logical time `lt`."""
        with self._lock:
            self._engine.transaction_emulator_set_unixtime(self._emulator, now)
            self._engine.transaction_emulator_set_lt(self._emulator, lt)
            raw = self._engine.transaction_emulator_emulate_transaction(
                self._emulator, base64.b64encode(shard_account), base64.b64encode(message.to_boc()))
        if not raw.get("success"):
            raise TvmError(f"emulation failed: {raw.get('error') or raw}")
        tx_boc = base64.b64decode(raw["transaction"])
        tx_cell = Cell.one_from_boc(tx_boc)
        _in, out = transaction_messages(tx_cell)
        return TxResult(shard_account=base64.b64decode(raw["shard_account"]),
                        transaction=Transaction.deserialize(tx_cell.begin_parse()),
                        out_messages=[OutMessage(c, MessageAny.deserialize(c.begin_parse())) for c in out],
                        boc=tx_boc)

    def run_get_method(self, code: Cell, data: Cell, address: Address, method: str, stack: list[Any] | None = None,
                       *, now: int, balance: int) -> list[Any]:
        """Run get-method `method` on (code, data) as the account `address` holding `balance` at `now`; its stack,
        bottom first. A non-zero exit code raises TvmError."""
        engine = self._engine
        with self._lock:
            emu = engine.tvm_emulator_create(base64.b64encode(code.to_boc()), base64.b64encode(data.to_boc()), 0)
            try:
                engine.tvm_emulator_set_c7(emu, address.to_str(is_user_friendly=False).encode(), now, balance,
                                           _ZERO_SEED.encode(), self._config_b64)
                raw = engine.tvm_emulator_run_get_method(
                    emu, get_method_id(method), base64.b64encode(VmStack.serialize(stack or []).to_boc()))
            finally:
                engine.tvm_emulator_destroy(emu)
        if not raw.get("success") or raw.get("vm_exit_code") not in (0, 1):
            raise TvmError(f"get-method {method} failed: exit code {raw.get('vm_exit_code')} "
                           f"{raw.get('error') or raw.get('vm_log', '')[-200:]}", raw.get("vm_exit_code"))
        return VmStack.deserialize(Slice.one_from_boc(base64.b64decode(raw["stack"])))

    def __del__(self) -> None:
        emulator = getattr(self, "_emulator", None)
        if emulator:
            self._engine.transaction_emulator_destroy(emulator)


def transaction_messages(tx_cell: Cell) -> tuple[Cell | None, list[Cell]]:
    """A transaction's inbound message and its outbound ones in order, as the cells the transaction holds.

    Taken from the transaction cell as emitted rather than re-serialized, so that what the destination receives is
    bit for bit what the contract sent, and the cells' hashes are the messages' hashes (how a message is found)."""
    msgs = tx_cell.refs[0].begin_parse()
    inbound = msgs.load_maybe_ref()
    out = msgs.load_dict(15, value_deserializer=lambda s: s.load_ref()) or {}
    return inbound, [out[i] for i in sorted(out)]


@cache
def shared_tvm(global_id: int | None = None) -> Tvm:
    """The process's emulator for a chain with this global id (None: the sandbox's recorded config as it is, a
    mainnet snapshot). Building one parses the 115 kB config: once per global id."""
    config = config_boc() if global_id is None else config_with_global_id(config_boc(), global_id)
    return Tvm(config)

