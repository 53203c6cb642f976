"""The local ledger: a single SQLite file on this machine holding the root registry's parameters.

Payment channels and the TVM-executed contracts plug in here in a later step; the proxy already reads its
prices through this interface so that nothing on the request path changes then.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from cocoon.config import Prices
from cocoon.ledger.base import Ledger, RootParams


class LocalLedger(Ledger):
    def __init__(self, path: str | Path, *, default_prices: Prices | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS root (id INTEGER PRIMARY KEY CHECK (id = 1),"
                         " version INTEGER NOT NULL, params BLOB NOT NULL)")
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT 1 FROM root WHERE id = 1").fetchone()
            if row is None:
                self._db.execute("INSERT INTO root VALUES (1, 1, ?)",
                                 (msgspec.json.encode(default_prices or Prices()),))
        self._cached = self._read()

    def _read(self) -> RootParams:
        version, params = self._db.execute("SELECT version, params FROM root WHERE id = 1").fetchone()
        return RootParams(version=version, prices=msgspec.json.decode(params, type=Prices))

    def root_params(self) -> RootParams:
        return self._cached

    def set_prices(self, prices: Prices) -> RootParams:
        """Owner operation: change the prices, bumping the registry version."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE root SET version = version + 1, params = ? WHERE id = 1",
                             (msgspec.json.encode(prices),))
        self._cached = self._read()
        return self._cached

    def close(self) -> None:
        self._db.close()
