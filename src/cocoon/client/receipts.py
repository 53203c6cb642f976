"""The client's receipts: each answer's receipt checked against what this client sent and received, and, with
payments on, kept (SQLite) as the evidence behind every charge (`cocoon ledger dispute` exports it).

What the client checks (ledger/receipts.py defines the receipt): both signatures, the countersignature by the
voucher key its attested proxy claims (with payments on, the key the root registry lists at that address), the
request id, the hash of the body it sent, the hash of the payloads it is delivering, the model, and that the
countersigned charge is the one the answer's end carried (usage, cost, coefficient, voucher). Whether the worker's
key was attested is the proxy's check (on its link); `cocoon receipt verify --cert` redoes it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from cocoon.fsutil import open_sqlite
from cocoon.ledger.receipts import Receipt, ReceiptError, request_digest
from cocoon.ledger.vouchers import Voucher
from cocoon.wire.messages import Request, ResponseEnd


def check_receipt(end: ResponseEnd, *, req: Request, answer_hash: bytes, proxy_key: bytes | None) -> Receipt:
    """The receipt `end` carries, if it holds for this request and answer; ReceiptError says why not."""
    receipt = end.receipt
    if receipt is None:
        raise ReceiptError("the answer came without a receipt")
    counter = receipt.verify(proxy_key or None)
    mismatches = [name for name, ok in (
        ("request_id", receipt.request_id == req.request_id),
        ("request_hash", receipt.request_hash == request_digest(req.body)),
        ("answer_hash", receipt.answer_hash == answer_hash),
        ("model", receipt.model == req.model),
        ("usage", counter.usage == end.usage),
        ("cost_nanoton", counter.cost_nanoton == end.cost_nanoton),
        ("coefficient", counter.coefficient == end.coefficient),
        ("voucher", counter.voucher == end.voucher),
    ) if not ok]
    if mismatches:
        raise ReceiptError(f"the receipt does not match this request and answer: {', '.join(mismatches)}")
    return receipt


_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    request_id TEXT NOT NULL, at REAL NOT NULL, channel TEXT NOT NULL, voucher_seqno INTEGER NOT NULL,
    cost_nanoton INTEGER NOT NULL, receipt BLOB, PRIMARY KEY (channel, request_id)
);
CREATE INDEX IF NOT EXISTS receipts_by_seqno ON receipts (channel, voucher_seqno);
"""


def receipts_path(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.receipts.sqlite"


class ReceiptBook:
    """Every charge this client saw, per channel: its cost, the voucher seqno that carried it, and the receipt
    backing it (NULL: charged without one, a stream broken off after its first token, which the proxy charges by
    its own count). Written as each answer ends; read by `cocoon ledger dispute`."""

    def __init__(self, path: str | Path) -> None:
        # NORMAL: no fsync per answer; a power cut may lose the newest rows, not corrupt the book
        self._db = open_sqlite(path, synchronous="NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def record(self, request_id: str, voucher: Voucher, cost_nanoton: int, receipt: Receipt | None) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO receipts VALUES (?, ?, ?, ?, ?, ?)",
                             (request_id, time.time(), voucher.contract, voucher.seqno, cost_nanoton,
                              receipt.encode() if receipt is not None else None))

    def charges(self, channel: str, up_to_seqno: int | None = None) -> list[dict[str, Any]]:
        """The charges seen on `channel` (oldest first), those carried by vouchers up to `up_to_seqno` if given."""
        query = "SELECT request_id, at, voucher_seqno, cost_nanoton, receipt FROM receipts WHERE channel = ?"
        args: tuple[Any, ...] = (channel,)
        if up_to_seqno is not None:
            query += " AND voucher_seqno <= ?"
            args += (up_to_seqno,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY voucher_seqno, at", args).fetchall()
        return [{"request_id": r[0], "at": r[1], "voucher_seqno": r[2], "cost_nanoton": r[3],
                 "receipt": Receipt.decode(r[4]) if r[4] is not None else None} for r in rows]

    def channels(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT channel FROM receipts ORDER BY channel")]

    def close(self) -> None:
        self._db.close()
