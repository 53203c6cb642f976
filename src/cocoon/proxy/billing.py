"""The proxy's books: every answered request's charge and payout, in one SQLite transaction each."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from cocoon.ledger.base import Ledger
from cocoon.ledger.pricing import Charge, price_request
from cocoon.wire.messages import Usage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    request_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    client_key TEXT NOT NULL,
    worker_key TEXT NOT NULL,
    model TEXT NOT NULL,
    coefficient INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    client_cost INTEGER NOT NULL,
    worker_fee INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS client_totals (
    client_key TEXT PRIMARY KEY, requests INTEGER NOT NULL, tokens INTEGER NOT NULL, charged INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS worker_totals (
    worker_key TEXT PRIMARY KEY, requests INTEGER NOT NULL, tokens INTEGER NOT NULL, earned INTEGER NOT NULL
);
"""


class Books:
    def __init__(self, path: str | Path, ledger: Ledger) -> None:
        self.ledger = ledger
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        # WAL + NORMAL: a commit is durable against process crashes without an fsync per request.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def settle(self, request_id: str, client_key: str, worker_key: str, model: str, usage: Usage,
               coefficient: int) -> Charge:
        """Price and record one answered request. A request id already recorded is never charged twice."""
        charge = price_request(usage, self.ledger.root_params().prices, coefficient)
        tokens = usage.prompt_tokens + usage.completion_tokens
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute(
                "INSERT OR IGNORE INTO charges VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (request_id, time.time(), client_key, worker_key, model, coefficient, usage.prompt_tokens,
                 usage.cached_tokens, usage.completion_tokens, usage.reasoning_tokens, charge.client_cost,
                 charge.worker_fee),
            )
            if cur.rowcount == 0:
                db.execute("ROLLBACK")
                row = db.execute("SELECT client_cost, worker_fee FROM charges WHERE request_id = ?",
                                 (request_id,)).fetchone()
                return Charge(*row)
            db.execute(
                "INSERT INTO client_totals VALUES (?, 1, ?, ?) ON CONFLICT(client_key) DO UPDATE SET "
                "requests = requests + 1, tokens = tokens + excluded.tokens, charged = charged + excluded.charged",
                (client_key, tokens, charge.client_cost),
            )
            db.execute(
                "INSERT INTO worker_totals VALUES (?, 1, ?, ?) ON CONFLICT(worker_key) DO UPDATE SET "
                "requests = requests + 1, tokens = tokens + excluded.tokens, earned = earned + excluded.earned",
                (worker_key, tokens, charge.worker_fee),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return charge

    def summary(self) -> dict[str, object]:
        clients = {k: {"requests": r, "tokens": t, "charged_nanoton": c}
                   for k, r, t, c in self._db.execute("SELECT * FROM client_totals")}
        workers = {k: {"requests": r, "tokens": t, "earned_nanoton": e}
                   for k, r, t, e in self._db.execute("SELECT * FROM worker_totals")}
        charged = sum(c["charged_nanoton"] for c in clients.values())
        earned = sum(w["earned_nanoton"] for w in workers.values())
        return {"clients": clients, "workers": workers, "charged_nanoton": charged, "paid_nanoton": earned,
                "commission_nanoton": charged - earned}

    def close(self) -> None:
        self._db.close()
