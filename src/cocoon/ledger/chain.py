"""A TON-like chain in one SQLite file on this machine, executing real contract code in the TVM emulator.

- Accounts: the emulator's shard account (BOC) per address, with its balance and status alongside for queries.
- Wallets: plain balances at addresses derived from an Ed25519 key (`cocoon.ledger.wallet`). A wallet sends an
  internal message with no fee of its own, as the sandbox's injected messages do, so an operation's fees here are
  exactly the contracts' (vectors/fees.json). The chain can mint coins into a wallet (a test network).
- What a message's header says beyond its destination, value, bounce flag and source is the chain's to decide, as
  on TON (whose action phase rewrites it): a wallet's message is refused unless those fields are the chain's own
  (not bounced, no fees, no logical time). Only the chain marks a message bounced, when it returns one its
  destination refused; its source is then that destination. (A sender-chosen `bounced` let a worker reset its
  channel's `paid` and redeem one voucher twice; a sender-chosen IHR fee was added to the value it delivered.)
- Global id: the chain's own (ConfigParam 19 of the config its emulator runs with), `LOCAL_GLOBAL_ID` unless the
  creator chose another, fixed at creation for every process using the file. Vouchers bind it.
- Messages: an operation is one message; every message it causes (internal messages, bounces) is then
  delivered in creation order until none is left, all at one `now`, each transaction `LT_STEP` after the last
  (the sandbox's spacing, so recorded vectors replay with their own logical times).
- Every operation is one SQLite transaction (WAL): a crash leaves the chain before or after it, never between.
- Conservation: minted = Σ wallet balances + Σ account balances + Σ fees (checked by `audit`).
- Each transaction's cell (what the emulator made; none for a delivery to a wallet, which runs no code) and its
  inbound message are kept, so that a message is found by its hash (`transactions_of`, the devnet's API).
- Clock: real time by default (injectable); `advance` adds a persistent offset that every process using the
  file sees, so tests can let a close delay pass at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytoniq_core import Address, Cell, Slice
from pytoniq_core.tlb.account import ShardAccount
from pytoniq_core.tlb.transaction import InternalMsgInfo, MessageAny

from cocoon.fsutil import open_sqlite
from cocoon.ledger.base import LedgerError
from cocoon.ledger.contracts import LOCAL_GLOBAL_ID
from cocoon.ledger.tvm import Tvm, TxResult, shared_tvm
from cocoon.ledger.wallet import Wallet, raw_address

LT_STEP = 1_000_000
MAX_TRANSACTIONS = 256  # per operation: a message loop between contracts stops here instead of running forever
_EMPTY_ACCOUNT = ShardAccount(account=None, last_trans_hash=bytes(32), last_trans_lt=0).serialize().to_boc()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS accounts (
    address TEXT PRIMARY KEY, shard_account BLOB NOT NULL, balance INTEGER NOT NULL, status TEXT NOT NULL,
    last_lt INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS wallets (
    address TEXT PRIMARY KEY, public_key BLOB, balance INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS transactions (
    lt INTEGER PRIMARY KEY, now INTEGER NOT NULL, address TEXT NOT NULL, source TEXT, op INTEGER,
    bounced INTEGER NOT NULL, exit_code INTEGER, success INTEGER NOT NULL, total_fees INTEGER NOT NULL,
    forward_fee INTEGER NOT NULL, value INTEGER NOT NULL, storage_fee INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS transaction_cells (
    lt INTEGER PRIMARY KEY, address TEXT NOT NULL, hash BLOB NOT NULL, in_msg_hash BLOB NOT NULL, boc BLOB,
    in_msg BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS transaction_cells_by_address ON transaction_cells (address, lt);
"""


@dataclass(frozen=True)
class ChainTx:
    """One transaction, as the chain recorded it. Deliveries to wallets are transactions without code."""

    lt: int
    address: str
    source: str | None
    op: int | None  # the inbound body's first 32 bits
    bounced: bool  # the inbound message is a bounce
    value: int  # carried by the inbound message
    exit_code: int | None  # None: no code ran (a wallet, or an account without state)
    success: bool
    total_fees: int
    forward_fee: int  # what the inbound message's forwarding cost, collected on delivery
    storage_fee: int = 0  # rent the account paid from its own balance (part of total_fees)
    result: TxResult | None = None  # the emulator's full answer (None for wallets)

    @property
    def fees(self) -> int:
        return self.total_fees + self.forward_fee


@dataclass(frozen=True)
class StoredTx:
    """A recorded transaction as an API serves it: its cell (None for a delivery to a wallet) and inbound message."""

    address: str
    lt: int
    hash: bytes
    in_msg_hash: bytes
    boc: bytes | None
    in_msg: bytes  # BOC of the inbound message
    now: int
    total_fees: int
    storage_fee: int
    value: int
    forward_fee: int


@dataclass(frozen=True)
class Receipt:
    transactions: list[ChainTx]

    @property
    def fees(self) -> int:
        return sum(t.fees for t in self.transactions)

    def first_on(self, address: str) -> ChainTx:
        return next(t for t in self.transactions if t.address == address)


@dataclass(frozen=True)
class Account:
    address: str
    status: str  # active | uninit | frozen
    balance: int
    code: Cell | None
    data: Cell | None
    last_lt: int


@dataclass(frozen=True)
class Audit:
    minted: int
    wallets: int
    accounts: int
    fees: int

    @property
    def balanced(self) -> bool:
        return self.minted == self.wallets + self.accounts + self.fees


class LocalChain:
    def __init__(self, path: str | Path, *, global_id: int | None = None, clock: Callable[[], float] = time.time,
                 tvm: Tvm | None = None, start_lt: int = LT_STEP) -> None:
        """Open the chain in `path`, creating it with `global_id` (None: LOCAL_GLOBAL_ID) if the file holds none;
        LedgerError when it is a chain with another global id. `tvm`: an emulator running this chain's config."""
        self.path = Path(path)
        self._clock = clock
        self._db = open_sqlite(self.path, busy_timeout_ms=30_000)
        self._db.executescript(_SCHEMA)
        # Reads outside an operation use their own connection: in WAL mode they never wait for a writer, so a
        # cached-view refresh on an event loop is not held up by a chain operation running in a thread.
        self._reader = open_sqlite(self.path, busy_timeout_ms=30_000, wal=False)
        self._reader_lock = threading.Lock()
        self._lock = threading.RLock()
        self._depth = 0
        self._writer: int | None = None  # the thread inside an operation
        with self.transaction():
            for key, value in (("lt", start_lt - LT_STEP), ("time_offset", 0), ("last_now", 0), ("minted", 0),
                               ("fees", 0), ("global_id", LOCAL_GLOBAL_ID if global_id is None else global_id)):
                self._db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
        self.global_id = int(self.get_meta("global_id"))
        if global_id is not None and global_id != self.global_id:
            self.close()
            raise LedgerError(f"{self.path} is a chain with global id {self.global_id}, not {global_id}")
        self._tvm = tvm or shared_tvm(self.global_id)

    # ---- transactions of the file ----
    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One SQLite write transaction; nested uses join the outermost (all or nothing)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            self._writer = threading.get_ident()
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._depth = 0
                self._writer = None

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        if self._writer == threading.get_ident():  # inside an operation: see its own writes
            return self._db.execute(sql, args).fetchall()
        with self._reader_lock:
            return self._reader.execute(sql, args).fetchall()

    def get_meta(self, key: str) -> Any:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def forget_meta(self, key: str) -> None:
        """Delete a meta entry so that its bytes do not linger in the file: the freed space is zeroed
        (secure_delete) and the write-ahead log, which held the old page, is checkpointed and truncated."""
        self._db.execute("PRAGMA secure_delete=ON")
        with self.transaction():
            self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
        if not self._depth:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _add_meta(self, key: str, delta: int) -> None:
        self._db.execute("UPDATE meta SET value = value + ? WHERE key = ?", (delta, key))

    # ---- clock ----
    def now(self) -> int:
        """Chain time: the clock plus the persistent offset, never earlier than the last operation's."""
        now = int(self._clock()) + int(self.get_meta("time_offset"))
        return max(now, int(self.get_meta("last_now")))

    def advance(self, seconds: int) -> int:
        """Move chain time forward for every process using this file (a test network's privilege)."""
        with self.transaction():
            self._add_meta("time_offset", seconds)
            return self.now()

    # ---- wallets ----
    def open_wallet(self, wallet: Wallet) -> str:
        """Register `wallet` (idempotent) so that it can send and receive."""
        with self.transaction():
            self._db.execute("INSERT OR IGNORE INTO wallets VALUES (?, ?, 0)", (wallet.address, wallet.public_key))
        return wallet.address

    def watch_wallet(self, address: str) -> str:
        """A receive-only wallet at `address` (no key known here: it can never send)."""
        address = raw_address(address)
        with self.transaction():
            self._db.execute("INSERT OR IGNORE INTO wallets VALUES (?, NULL, 0)", (address,))
        return address

    def mint(self, address: str, amount: int) -> None:
        """Create `amount` new coins in the wallet at `address` (a test network's faucet)."""
        if amount < 0:
            raise ValueError("cannot mint a negative amount")
        with self.transaction():
            cur = self._db.execute("UPDATE wallets SET balance = balance + ? WHERE address = ?",
                                   (amount, raw_address(address)))
            if cur.rowcount != 1:
                raise LedgerError(f"no wallet {address} on this chain")
            self._add_meta("minted", amount)

    # ---- reads ----
    def balance(self, address: str) -> int:
        address = raw_address(address)
        rows = self._read("SELECT balance FROM wallets WHERE address = ? UNION ALL "
                          "SELECT balance FROM accounts WHERE address = ?", (address, address))
        return rows[0][0] if rows else 0

    def is_wallet(self, address: str) -> bool:
        """Whether `address` is one of this chain's plain wallets (which run no code)."""
        return bool(self._read("SELECT 1 FROM wallets WHERE address = ?", (raw_address(address),)))

    def wallet_key(self, address: str) -> bytes | None:
        rows = self._read("SELECT public_key FROM wallets WHERE address = ?", (raw_address(address),))
        return bytes(rows[0][0]) if rows and rows[0][0] is not None else None

    def account(self, address: str) -> Account | None:
        address = raw_address(address)
        rows = self._read("SELECT shard_account, last_lt FROM accounts WHERE address = ?", (address,))
        if not rows:
            return None
        row = rows[0]
        acc = ShardAccount.deserialize(Slice.one_from_boc(row[0])).account
        if acc is None:
            return None
        init = getattr(acc.storage.state, "state_init", None)  # only active accounts have one
        return Account(address, _status(acc.storage.state.type_), acc.storage.balance.grams,
                       init.code if init else None, init.data if init else None, row[1])

    def last_lt(self, address: str) -> int:
        """The logical time of the account's last transaction (0 if none): cheap change detection."""
        rows = self._read("SELECT last_lt FROM accounts WHERE address = ?", (raw_address(address),))
        return rows[0][0] if rows else 0

    def get(self, address: str, method: str, stack: list[Any] | None = None) -> list[Any]:
        """Run a get-method on an active account."""
        acc = self.account(address)
        if acc is None or acc.status != "active" or acc.code is None or acc.data is None:
            raise LedgerError(f"no active contract at {address}")
        return self._tvm.run_get_method(acc.code, acc.data, Address(acc.address), method, stack,
                                        now=self.now(), balance=acc.balance)

    def audit(self) -> Audit:
        with self.transaction():  # one consistent snapshot
            (wallets,), = self._read("SELECT COALESCE(SUM(balance), 0) FROM wallets")
            (accounts,), = self._read("SELECT COALESCE(SUM(balance), 0) FROM accounts")
            return Audit(int(self.get_meta("minted")), wallets, accounts, int(self.get_meta("fees")))

    def transactions_of(self, address: str, limit: int, before_lt: int | None = None) -> list[StoredTx]:
        """The account's transactions, newest first, at most `limit`, older than `before_lt` when given."""
        rows = self._read("SELECT c.lt, c.hash, c.in_msg_hash, c.boc, c.in_msg, t.now, t.total_fees, t.storage_fee, "
                          "t.value, t.forward_fee FROM transaction_cells c JOIN transactions t ON t.lt = c.lt "
                          "WHERE c.address = ? AND c.lt < ? ORDER BY c.lt DESC LIMIT ?",
                          (raw_address(address), before_lt if before_lt is not None else 2**63 - 1, limit))
        return [StoredTx(address=raw_address(address), lt=r[0], hash=bytes(r[1]), in_msg_hash=bytes(r[2]),
                         boc=bytes(r[3]) if r[3] is not None else None, in_msg=bytes(r[4]), now=r[5],
                         total_fees=r[6], storage_fee=r[7], value=r[8], forward_fee=r[9]) for r in rows]

    def transactions(self, since_lt: int = 0) -> list[tuple[Any, ...]]:
        """Recorded transactions after `since_lt`, oldest first (for `cocoon ledger status` and tests)."""
        return self._read("SELECT * FROM transactions WHERE lt > ? ORDER BY lt", (since_lt,))

    # ---- sending ----
    def send(self, wallet: Wallet, message: Cell) -> Receipt:
        """Send `message` (an internal message from `wallet`, see layouts.internal_message) and process
        everything it causes. The wallet pays the message's value."""
        msg = MessageAny.deserialize(message.begin_parse())
        info = msg.info
        if not isinstance(info, InternalMsgInfo) or raw_address(info.src) != wallet.address:
            raise LedgerError(f"a wallet sends internal messages from its own address ({wallet.address})")
        if info.bounced:
            raise LedgerError("a wallet cannot send a bounce: only the chain marks a message bounced, when it returns "
                              "one that its destination refused")
        if info.ihr_fee or info.fwd_fee or info.created_lt or info.created_at or not info.ihr_disabled:
            raise LedgerError("a wallet's message leaves fees, logical time and creation time to the chain "
                              "(zero, IHR disabled)")
        with self.transaction():
            row = self._db.execute("SELECT public_key, balance FROM wallets WHERE address = ?",
                                   (wallet.address,)).fetchone()
            if row is None or row[0] != wallet.public_key:
                raise LedgerError(f"wallet {wallet.address} is not open on this chain")
            value = info.value.grams
            if row[1] < value:
                raise LedgerError(f"wallet {wallet.address} holds {row[1]} nanoTON, the operation needs {value}")
            self._db.execute("UPDATE wallets SET balance = balance - ? WHERE address = ?", (value, wallet.address))
            return self.deliver(message)

    def deliver(self, message: Cell) -> Receipt:
        """Deliver `message` as is, then every message it causes, to completion: a message the chain made itself
        (`send`, after checking a wallet's) or a recorded one replayed; never a party's own, whose header could say
        anything. The caller accounts for the value it carries (`send` debits a wallet; replayed vectors bring
        their own)."""
        with self.transaction():
            now = self.now()
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'last_now'", (now,))
            queue: deque[Cell] = deque([message])
            done: list[ChainTx] = []
            while queue:
                if len(done) >= MAX_TRANSACTIONS:
                    raise LedgerError(f"more than {MAX_TRANSACTIONS} transactions for one operation: a message loop")
                tx = self._process(queue.popleft(), now)
                done.append(tx)
                if tx.result is not None:
                    queue.extend(o.cell for o in tx.result.out_messages
                                 if isinstance(o.message.info, InternalMsgInfo))
            return Receipt(done)

    def _process(self, cell: Cell, now: int) -> ChainTx:
        msg = MessageAny.deserialize(cell.begin_parse())
        info = msg.info
        internal = isinstance(info, InternalMsgInfo)
        dest = raw_address(info.dest)
        self._add_meta("lt", LT_STEP)
        lt = int(self.get_meta("lt"))
        body = msg.body.begin_parse()
        op = body.preload_uint(32) if len(body.bits) >= 32 else None
        source = raw_address(info.src) if internal and info.src is not None else None
        forward_fee = (info.fwd_fee + info.ihr_fee) if internal else 0
        value = info.value.grams if internal else 0
        bounced = bool(internal and info.bounced)
        wallet = self._db.execute("SELECT 1 FROM wallets WHERE address = ?", (dest,)).fetchone()
        if wallet is not None:
            self._db.execute("UPDATE wallets SET balance = balance + ? WHERE address = ?", (value, dest))
            tx = ChainTx(lt, dest, source, op, bounced, value, None, True, 0, forward_fee)
        else:
            row = self._db.execute("SELECT shard_account FROM accounts WHERE address = ?", (dest,)).fetchone()
            result = self._tvm.run_transaction(row[0] if row else _EMPTY_ACCOUNT, cell, now=now, lt=lt)
            self._store_account(dest, result.shard_account, lt)
            tx = ChainTx(lt, dest, source, op, bounced, value, result.exit_code, result.success, result.total_fees,
                         forward_fee, result.storage_fee, result)
        self._add_meta("fees", tx.fees)
        self._db.execute("INSERT INTO transactions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (lt, now, dest, source, op, int(bounced), tx.exit_code, int(tx.success), tx.total_fees,
                          forward_fee, value, tx.storage_fee))
        # a delivery to a wallet has no transaction cell: its hash is made from what identifies it
        tx_hash = (Cell.one_from_boc(tx.result.boc).hash if tx.result is not None and tx.result.boc
                   else hashlib.sha256(b"cocoon-wallet-delivery" + lt.to_bytes(8, "big") + cell.hash).digest())
        self._db.execute("INSERT INTO transaction_cells VALUES (?, ?, ?, ?, ?, ?)",
                         (lt, dest, tx_hash, cell.hash, tx.result.boc if tx.result is not None else None,
                          cell.to_boc()))
        return tx

    def _store_account(self, address: str, shard_account: bytes, lt: int) -> None:
        acc = ShardAccount.deserialize(Slice.one_from_boc(shard_account)).account
        if acc is None:  # deleted (or never created): nothing left at the address
            self._db.execute("DELETE FROM accounts WHERE address = ?", (address,))
            return
        self._db.execute("INSERT OR REPLACE INTO accounts VALUES (?, ?, ?, ?, ?)",
                         (address, shard_account, acc.storage.balance.grams, _status(acc.storage.state.type_), lt))

    def load_account(self, address: str, shard_account: bytes) -> None:
        """Put an account recorded elsewhere (a vector's state) on this chain, its balance counted as minted."""
        with self.transaction():
            acc = ShardAccount.deserialize(Slice.one_from_boc(shard_account)).account
            self._store_account(raw_address(address), shard_account, 0)
            self._add_meta("minted", acc.storage.balance.grams if acc else 0)

    def close(self) -> None:
        self._db.close()
        self._reader.close()


def _status(type_: str) -> str:
    return type_.removeprefix("account_")  # pytoniq names them account_active, account_uninit, account_frozen
