"""The proxy's books: what each client owes and each worker earned, and the vouchers that prove it.

- A request id belongs to the client (the paying party) that chose it, and gets one answer, charged once: `begin`
  takes it before any work and refuses one in flight or settled already (`DuplicateRequest`), until `end`. In-flight
  ids live in memory (a crash ends every request in flight); settled ones are rows of the `requests` table, so a
  replay is refused across reconnects and restarts.
- Every answered request is settled in one SQLite transaction keyed by (client, request id): its charge and payout,
  the client's and the worker's new cumulative totals, and the vouchers for them (signed with the proxy's key).
- Before a request starts, `reserve` holds its maximum cost against what the client can still be charged; the
  reservation lives in memory only (after a crash no answer of an unsettled request was accepted as billed).
  Settling holds the reported usage to the request's bounds and the charge to its reservation: a worker cannot
  charge more than the client reserved, however many tokens it claims.
- What a client can be charged is bounded by its channel's stake, not its balance: a client may withdraw
  everything above its stake at any time without asking, so the proxy extends no more credit than the stake
  guarantees. `available = min(balance, stake) − (charged in the books − claimed on chain) − reserved`.
- A spot check's re-run (issue 11) is paid to its worker like an answer, as the proxy's own cost (`pay_check`): a
  row whose paying party is `CHECKS`, charged to nobody, and the worker's next payout voucher.
- The state (seqno, hash) is a hash chain over the settled requests: each settlement increments the seqno and
  hashes the previous hash with the request's row. The proxy commits it on chain; after a restart, books behind
  (or beside) the committed state refuse to serve (`check_commit`).
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cocoon.config import Prices
from cocoon.core.errors import CocoonError
from cocoon.core.usage import Usage
from cocoon.fsutil import open_sqlite
from cocoon.ledger.contracts import Tag
from cocoon.ledger.pricing import Bounds, Charge, price_request
from cocoon.ledger.vouchers import Voucher, sign_voucher, ton
from cocoon.ledger.wallet import Wallet

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT NOT NULL, seqno INTEGER NOT NULL UNIQUE, state_hash BLOB NOT NULL, ts REAL NOT NULL,
    client TEXT NOT NULL, worker TEXT NOT NULL, model TEXT NOT NULL, coefficient INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL, client_cost INTEGER NOT NULL, worker_fee INTEGER NOT NULL,
    PRIMARY KEY (client, request_id)
);
CREATE TABLE IF NOT EXISTS clients (
    client TEXT PRIMARY KEY, channel TEXT, requests INTEGER NOT NULL DEFAULT 0, tokens INTEGER NOT NULL DEFAULT 0,
    charged INTEGER NOT NULL DEFAULT 0, seqno INTEGER NOT NULL DEFAULT 0, signature BLOB,
    claimed INTEGER NOT NULL DEFAULT 0, balance INTEGER NOT NULL DEFAULT 0, stake INTEGER NOT NULL DEFAULT 0,
    chain_seqno INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT 'new'
);
CREATE TABLE IF NOT EXISTS workers (
    worker TEXT PRIMARY KEY, channel TEXT, requests INTEGER NOT NULL DEFAULT 0, tokens INTEGER NOT NULL DEFAULT 0,
    earned INTEGER NOT NULL DEFAULT 0, seqno INTEGER NOT NULL DEFAULT 0, signature BLOB,
    redeemed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
INSERT OR IGNORE INTO meta VALUES ('seqno', 0);
INSERT OR IGNORE INTO meta VALUES ('state_hash', zeroblob(32));
"""


class BooksError(CocoonError):
    pass


class PaymentRequired(BooksError):
    """The client cannot cover a request's maximum cost (HTTP 402)."""


class DuplicateRequest(BooksError):
    """The client already has a request with this id in flight or settled (HTTP 409): one answer per id."""


class RolledBack(BooksError):
    """The books are behind, or beside, the state the proxy committed on chain: serving would re-bill or forget."""


@dataclass(frozen=True)
class Settled:
    charge: Charge
    client_voucher: Voucher | None  # None while the client has no channel
    worker_voucher: Voucher | None  # None while the worker has no channel
    usage: Usage = field(default_factory=Usage)  # what was charged: the worker's report held to the request's bounds
    beyond: tuple[str, ...] = ()  # the counts the worker reported beyond those bounds (charged at the bound)


_Key = tuple[str, str]  # (client, request id)

# the paying party of spot checks' re-runs in the `requests` table: the proxy itself, which no client channel backs
CHECKS = "proxy:spot-checks"


@dataclass
class _InFlight:
    ids: set[_Key] = field(default_factory=set)
    held: dict[_Key, int] = field(default_factory=dict)  # reservations
    held_by_client: dict[str, int] = field(default_factory=dict)


class ProxyBooks:
    def __init__(self, path: str | Path, signer: Wallet, global_id: int) -> None:
        """`signer` holds the proxy's voucher key (the one its proxy contract was registered with); `global_id` is
        the network's, which every voucher binds."""
        # WAL + NORMAL: a commit survives a crash of the process without an fsync per request; `durable()`
        # syncs before the state is committed on chain.
        self._db = open_sqlite(path, synchronous="NORMAL")
        _migrate(self._db)
        self._db.executescript(_SCHEMA)
        self._signer = signer
        self._global_id = global_id
        self._lock = threading.Lock()
        self._flight = _InFlight()

    # ---- channels, as the chain last showed them ----
    def set_client_channel(self, client: str, channel: str, *, balance: int, stake: int, claimed: int,
                           chain_seqno: int, state: str) -> None:
        """Record the client's channel and its on-chain state (`claimed`: the charged total on chain)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO clients (client, channel, balance, stake, claimed, chain_seqno, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (client) DO UPDATE SET channel = excluded.channel, "
                "balance = excluded.balance, stake = excluded.stake, claimed = excluded.claimed, "
                "chain_seqno = excluded.chain_seqno, state = excluded.state",
                (client, channel, balance, stake, claimed, chain_seqno, state))

    def set_worker_channel(self, worker: str, channel: str, *, redeemed: int) -> None:
        with self._lock:
            self._db.execute("INSERT INTO workers (worker, channel, redeemed) VALUES (?, ?, ?) ON CONFLICT (worker) "
                             "DO UPDATE SET channel = excluded.channel, redeemed = excluded.redeemed",
                             (worker, channel, redeemed))

    # ---- before and after a request ----
    def begin(self, request_id: str, client: str) -> None:
        """Take `request_id` for `client` until `end`; DuplicateRequest if it is in flight or was settled."""
        key = (client, request_id)
        with self._lock:
            if key in self._flight.ids or self._db.execute(
                    "SELECT 1 FROM requests WHERE client = ? AND request_id = ?", key).fetchone() is not None:
                raise DuplicateRequest(f"request id `{request_id}` was used before by this client: each request "
                                       f"needs an id of its own (one answer per id, charged once)")
            self._flight.ids.add(key)

    def end(self, request_id: str, client: str) -> None:
        """The request is over: its reservation, if any, is dropped and its id freed (a settled id stays taken)."""
        with self._lock:
            self._flight.ids.discard((client, request_id))
            self._release((client, request_id))

    def available(self, client: str) -> int:
        """What the client can still be charged now (reservations included)."""
        with self._lock:
            return self._available(client)

    def _available(self, client: str) -> int:
        row = self._db.execute("SELECT balance, stake, charged, claimed, state FROM clients WHERE client = ?",
                               (client,)).fetchone()
        if row is None or row[4] != "open":
            return 0
        balance, stake, charged, claimed, _ = row
        return min(balance, stake) - (charged - claimed) - self._flight.held_by_client.get(client, 0)

    def reserve(self, request_id: str, client: str, amount: int) -> None:
        """Hold `amount` (the request's maximum cost) for `request_id`, or raise PaymentRequired."""
        key = (client, request_id)
        with self._lock:
            if key in self._flight.held:
                raise DuplicateRequest(f"request id `{request_id}` holds a reservation already")
            available = self._available(client)
            if amount > available:
                raise PaymentRequired(
                    f"this request may cost up to {ton(amount)} TON; the client's channel covers "
                    f"{ton(max(available, 0))} TON more (its stake, less charges not yet settled on chain and "
                    f"requests in flight): top up the channel or raise its stake")
            self._flight.held[key] = amount
            self._flight.held_by_client[client] = self._flight.held_by_client.get(client, 0) + amount

    def _release(self, key: _Key) -> None:
        amount = self._flight.held.pop(key, None)
        if amount is not None:
            client = key[0]
            left = self._flight.held_by_client[client] - amount
            if left:
                self._flight.held_by_client[client] = left
            else:
                del self._flight.held_by_client[client]

    def settle(self, request_id: str, client: str, worker: str, model: str, usage: Usage, prices: Prices,
               coefficient: int, bounds: Bounds | None = None) -> Settled:
        """Price and record one answered request, sign the client's and the worker's new cumulative vouchers, and
        release its reservation: one transaction. `usage` is held to `bounds` and the charge to the reservation;
        a request id settled before raises DuplicateRequest and changes nothing."""
        beyond: tuple[str, ...] = ()
        if bounds is not None:
            usage, beyond = bounds.hold(usage)
        charge = price_request(usage, prices, coefficient)
        with self._lock:
            reserved = self._flight.held.get((client, request_id))
            if reserved is not None and charge.client_cost > reserved:
                # only a coefficient above the one reserved for gets here (the router never picks one): the
                # reservation is what the client agreed to, and the worker's fee is never above the charge
                charge = Charge(reserved, min(charge.worker_fee, reserved))
            client_voucher, worker_voucher = self._record(request_id, client, worker, model, coefficient, usage,
                                                          charge)
            self._release((client, request_id))
        return Settled(charge, client_voucher, worker_voucher, usage, beyond)

    def pay_check(self, check_id: str, worker: str, model: str, usage: Usage, prices: Prices, coefficient: int,
                  bounds: Bounds | None = None) -> Settled:
        """Pay `worker` for a spot check's re-run (`check_id`, unique per run) as the proxy's own cost: its usage
        held to the checked request's `bounds`, its fee recorded under `CHECKS` with no client charged, and the
        worker's new cumulative payout voucher signed, in one transaction (DuplicateRequest for an id paid before)."""
        beyond: tuple[str, ...] = ()
        if bounds is not None:
            usage, beyond = bounds.hold(usage)
        charge = Charge(0, price_request(usage, prices, coefficient).worker_fee)
        with self._lock:
            _, worker_voucher = self._record(check_id, CHECKS, worker, model, coefficient, usage, charge)
        return Settled(charge, None, worker_voucher, usage, beyond)

    def _record(self, request_id: str, client: str, worker: str, model: str, coefficient: int, usage: Usage,
                charge: Charge) -> tuple[Voucher | None, Voucher | None]:
        """One settled row, the hash chain extended over it, and the cumulative vouchers it moves (the client's
        charge unless the proxy pays, `CHECKS`; the worker's payout), in one transaction; the caller holds the
        lock."""
        tokens = usage.total_tokens
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM requests WHERE client = ? AND request_id = ?",
                          (client, request_id)).fetchone() is not None:
                raise DuplicateRequest(f"request id `{request_id}` of this client was settled before")
            (seqno,), (prev_hash,) = db.execute("SELECT value FROM meta WHERE key IN ('seqno', 'state_hash') "
                                                "ORDER BY key").fetchall()
            seqno += 1
            fields = (request_id, client, worker, model, coefficient, usage.prompt_tokens, usage.cached_tokens,
                      usage.completion_tokens, usage.reasoning_tokens, charge.client_cost, charge.worker_fee)
            state_hash = _chain_hash(prev_hash, seqno, fields)
            db.execute("INSERT INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       (request_id, seqno, state_hash, time.time(), *fields[1:]))
            db.execute("UPDATE meta SET value = ? WHERE key = 'seqno'", (seqno,))
            db.execute("UPDATE meta SET value = ? WHERE key = 'state_hash'", (state_hash,))
            client_voucher = None if client == CHECKS else self._bump(
                "clients", "client", "charged", client, tokens, charge.client_cost, Tag.CHARGE)
            worker_voucher = self._bump("workers", "worker", "earned", worker, tokens, charge.worker_fee, Tag.PAYOUT)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return client_voucher, worker_voucher

    def _bump(self, table: str, key: str, total: str, name: str, tokens: int, amount: int,
              tag: Tag) -> Voucher | None:
        db = self._db
        db.execute(f"INSERT OR IGNORE INTO {table} ({key}) VALUES (?)", (name,))
        channel, cumulative, seqno = db.execute(f"SELECT channel, {total} + ?, seqno + 1 FROM {table} "
                                                f"WHERE {key} = ?", (amount, name)).fetchone()
        voucher = (sign_voucher(self._signer, tag, channel, seqno, cumulative, global_id=self._global_id)
                   if channel and amount else None)
        db.execute(f"UPDATE {table} SET requests = requests + 1, tokens = tokens + ?, {total} = ?, "
                   f"seqno = seqno + ?, signature = ? WHERE {key} = ?",
                   (tokens, cumulative, int(voucher is not None), voucher.signature if voucher else None, name))
        return voucher

    def _latest(self, table: str, key: str, total: str, name: str, tag: Tag) -> Voucher | None:
        row = self._db.execute(f"SELECT channel, seqno, {total}, signature FROM {table} WHERE {key} = ?",
                               (name,)).fetchone()
        if row is None or row[0] is None or row[3] is None:
            return None
        return Voucher(int(tag), self._global_id, row[0], row[1], row[2], row[3])

    # ---- settlement on chain ----
    def client_voucher(self, client: str) -> Voucher | None:
        """The latest charge voucher of the client's channel (what the proxy claims on chain)."""
        with self._lock:
            return self._latest("clients", "client", "charged", client, Tag.CHARGE)

    def unclaimed(self) -> list[tuple[str, int, int, str]]:
        """(client, charged in the books − claimed on chain, stake, channel state) of every open or closing
        channel with something to claim."""
        with self._lock:
            return self._db.execute("SELECT client, charged - claimed, stake, state FROM clients "
                                    "WHERE charged > claimed AND state IN ('open', 'closing')").fetchall()

    def settled_since(self, client: str, after_ts: float) -> tuple[int, float, float, float]:
        """(count, sum, min, max) of the settlement times (unix) of the client's requests settled after `after_ts`:
        what a claim made now covers, for measuring settlement to finality."""
        with self._lock:
            n, total, first, last = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(ts), 0), COALESCE(MIN(ts), 0), COALESCE(MAX(ts), 0) FROM requests "
                "WHERE client = ? AND ts > ?", (client, after_ts)).fetchone()
        return n, total, first, last

    def state(self) -> tuple[int, bytes]:
        with self._lock:
            (seqno,), (state_hash,) = self._db.execute(
                "SELECT value FROM meta WHERE key IN ('seqno', 'state_hash') ORDER BY key").fetchall()
        return seqno, bytes(state_hash)

    def durable(self) -> tuple[int, bytes]:
        """The state, after making sure it survives a power loss (before committing it on chain): one empty
        write with synchronous=FULL syncs the write-ahead log, and with it every commit before."""
        with self._lock:
            self._db.execute("PRAGMA synchronous=FULL")
            try:
                self._db.execute("UPDATE meta SET value = value WHERE key = 'seqno'")
            finally:
                self._db.execute("PRAGMA synchronous=NORMAL")
        return self.state()

    def check_commit(self, committed_seqno: int, committed_hash: bytes) -> None:
        """Raise RolledBack unless these books contain the state committed on chain."""
        seqno, _ = self.state()
        if committed_seqno == 0:
            return
        if seqno < committed_seqno:
            raise RolledBack(f"the books are at seqno {seqno} but this proxy committed seqno {committed_seqno} on "
                             f"chain: the database was rolled back or replaced; refusing to serve (restore the "
                             f"newest database)")
        with self._lock:
            row = self._db.execute("SELECT state_hash FROM requests WHERE seqno = ?", (committed_seqno,)).fetchone()
        if row is None or bytes(row[0]) != committed_hash:
            raise RolledBack(f"the books' state at seqno {committed_seqno} differs from the one committed on chain: "
                             f"this is not the database the proxy committed from; refusing to serve")

    # ---- reporting ----
    def summary(self) -> dict[str, Any]:
        with self._lock:
            clients = {c: {"channel": ch, "requests": r, "tokens": t, "charged_nanoton": charged,
                           "claimed_nanoton": claimed, "balance_nanoton": bal, "stake_nanoton": stake,
                           "reserved_nanoton": self._flight.held_by_client.get(c, 0)}
                       for c, ch, r, t, charged, claimed, bal, stake in self._db.execute(
                           "SELECT client, channel, requests, tokens, charged, claimed, balance, stake FROM clients")}
            workers = {w: {"channel": ch, "requests": r, "tokens": t, "earned_nanoton": e, "redeemed_nanoton": red}
                       for w, ch, r, t, e, red in self._db.execute(
                           "SELECT worker, channel, requests, tokens, earned, redeemed FROM workers")}
            (checks,) = self._db.execute("SELECT COALESCE(SUM(worker_fee), 0) FROM requests WHERE client = ?",
                                         (CHECKS,)).fetchone()
        charged = sum(c["charged_nanoton"] for c in clients.values())
        earned = sum(w["earned_nanoton"] for w in workers.values())
        # paid: every payout, spot checks' re-runs included (`checks_nanoton`, the proxy's cost of checking)
        return {"clients": clients, "workers": workers, "charged_nanoton": charged, "paid_nanoton": earned,
                "checks_nanoton": checks, "commission_nanoton": charged - earned}

    def close(self) -> None:
        self._db.close()


def _migrate(db: Any) -> None:
    """Books from before request ids were kept per client (one id for everyone): the same rows, keyed anew."""
    keys = [row[1] for row in db.execute("PRAGMA table_info(requests)") if row[5]]
    if keys == ["request_id"]:
        db.executescript("BEGIN; ALTER TABLE requests RENAME TO requests_old;" + _SCHEMA.split(";")[0] + ";"
                         "INSERT INTO requests SELECT * FROM requests_old; DROP TABLE requests_old; COMMIT;")


def _chain_hash(prev: bytes, seqno: int, fields: tuple[Any, ...]) -> bytes:
    h = hashlib.sha256(bytes(prev))
    h.update(seqno.to_bytes(8, "big"))
    for f in fields:
        h.update(str(f).encode() + b"\x00")
    return h.digest()
