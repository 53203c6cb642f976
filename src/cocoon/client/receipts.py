"""The client's receipts: each answer's receipt checked against what this client sent and received, and, with
payments on, kept (SQLite) as the evidence behind every charge (`cocoon ledger dispute` exports it).

What the client checks (ledger/receipts.py defines the receipt): both signatures, the countersignature by the
voucher key its attested proxy claims (with payments on, the key the root registry lists at that address), the
request id, the hash of the body it sent, the hash of the payloads it is delivering, the model, and that the
countersigned charge is the one the answer's end carried (usage, cost, coefficient, and the voucher if it carried
one). Whether the worker's key was attested is the proxy's check (on its link); `cocoon receipt verify --cert`
redoes it. A sealed request's receipt must also be signed by the very worker whose attested HPKE key opened it
(`worker_key`: the client verified that worker's certificate itself before sealing), and, when this client marked
it deterministic, state the content digest of the answer it opened (`AnswerSeen`): what the proxy's spot checks
compare two workers' runs by, so a worker cannot sign one answer's content and serve another.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from cocoon.fsutil import open_sqlite
from cocoon.ledger.contracts import Tag
from cocoon.ledger.receipts import AnswerHasher, Receipt, ReceiptError, request_digest
from cocoon.ledger.vouchers import Voucher, VoucherBook
from cocoon.openai.content import ContentDigest
from cocoon.wire.messages import Request, ResponseEnd

RECEIPT_HEADER = "x-cocoon-receipt"  # a whole answer's receipt, base64 (a stream's is in `usage.receipt`)


class Answering(NamedTuple):
    """What checking one answer's receipt and paying for it needs: the request sent, its payments ticket, and the
    voucher key of the attested proxy it went to."""

    req: Request
    ticket: int
    proxy_key: bytes
    worker_key: bytes = b""  # a sealed request: the attested key of the worker that opened it (client/sealing.py)
    deterministic: bool = False  # sent sealed marked deterministic: its receipt states the answer's content digest
    request_hash: bytes = b""  # a body in parts (a media job): its hash with the parts; else that of `req.body`


class AnswerSeen:
    """What the client hashes of an answer as its payloads go by (opened, for a sealed one), to check its receipt:
    the answer hash, and the content digest when the request went out marked deterministic."""

    __slots__ = ("_answer", "_content")

    def __init__(self, deterministic: bool = False) -> None:
        self._answer = AnswerHasher()
        self._content = ContentDigest() if deterministic else None

    def update(self, payload: bytes, *, has_usage: bool | None = None) -> None:
        self._answer.update(payload, has_usage=has_usage)
        if self._content is not None:
            self._content.add(payload)

    def answer_hash(self) -> bytes:
        return self._answer.digest()

    def content_digest(self) -> bytes | None:
        """None: not marked deterministic, so its receipt states none to check."""
        return self._content.digest() if self._content is not None else None


class FileSeen:
    """What the client hashes of a media answer (a file in chunks) to check its receipt: the SHA-256 of the output
    file (ledger/receipts.py); it states no content digest."""

    __slots__ = ("_hash",)

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self._hash.update(data)

    def answer_hash(self) -> bytes:
        return self._hash.digest()

    def content_digest(self) -> bytes | None:
        return None


def check_receipt(end: ResponseEnd, *, req: Request, answer_hash: bytes, proxy_key: bytes | None,
                  worker_key: bytes = b"", content_digest: bytes | None = None, request_hash: bytes = b"") -> Receipt:
    """The receipt `end` carries, if it holds for this request and answer (and states `content_digest` when one is
    given); ReceiptError says why not. `request_hash`: a body in parts (a media job) is hashed with its parts by
    the caller (ledger/receipts.py `parts_digest`); by default the hash of `req.body`."""
    receipt = end.receipt
    if receipt is None:
        raise ReceiptError("the answer came without a receipt")
    counter = receipt.verify(proxy_key or None)
    mismatches = [name for name, ok in (
        ("request_id", receipt.request_id == req.request_id),
        ("request_hash", receipt.request_hash == (request_hash or request_digest(req.body))),
        ("answer_hash", receipt.answer_hash == answer_hash),
        ("model", receipt.model == req.model),
        ("usage", counter.usage == end.usage),
        ("cost_nanoton", counter.cost_nanoton == end.cost_nanoton),
        ("coefficient", counter.coefficient == end.coefficient),
        # the voucher the answer came with, when it came with one (a relay's device gets its answers without)
        ("voucher", end.voucher is None or counter.names(end.voucher)),
        ("worker_key", not worker_key or receipt.worker_key == worker_key),
        ("content_digest", content_digest is None or receipt.content_digest == content_digest),
    ) if not ok]
    if mismatches:
        raise ReceiptError(f"the receipt does not match this request and answer: {', '.join(mismatches)}")
    return receipt


_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    channel TEXT NOT NULL, request_id TEXT NOT NULL, at REAL NOT NULL, voucher_seqno INTEGER NOT NULL,
    cost_nanoton INTEGER NOT NULL, broken INTEGER NOT NULL, voucher BLOB NOT NULL, receipt BLOB,
    PRIMARY KEY (channel, request_id)
);
"""


_VOUCHER = msgspec.msgpack.Decoder(Voucher)


def receipts_path(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.receipts.sqlite"


class ReceiptBook:
    """Every charge this client saw, per channel: its cost, the voucher that carried it, and the receipt backing it
    (none: an answer whose receipt did not hold or never came, or a stream broken off after its first token
    (`broken`), which no worker signs for and the proxy charges by its own count). Written as each answer ends;
    read by `cocoon ledger dispute`."""

    def __init__(self, path: str | Path) -> None:
        # NORMAL: no fsync per answer; a power cut may lose the newest rows, not corrupt the book
        self._db = open_sqlite(path, synchronous="NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def record(self, request_id: str, voucher: Voucher, cost_nanoton: int, receipt: Receipt | None, *,
               broken: bool = False) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (voucher.contract, request_id, time.time(), voucher.seqno, cost_nanoton, int(broken),
                              msgspec.msgpack.encode(voucher), receipt.encode() if receipt is not None else None))

    def charges(self, channel: str) -> list[Charged]:
        """The charges seen on `channel`, in the order of the vouchers that carried them."""
        with self._lock:
            rows = self._db.execute("SELECT request_id, at, cost_nanoton, broken, voucher, receipt FROM receipts "
                                    "WHERE channel = ? ORDER BY voucher_seqno, at", (channel,)).fetchall()
        return [Charged(r[0], r[1], r[2], bool(r[3]), _VOUCHER.decode(r[4]),
                        Receipt.decode(r[5]) if r[5] is not None else None) for r in rows]

    def channels(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT channel FROM receipts ORDER BY channel")]

    def close(self) -> None:
        self._db.close()


class Charged(NamedTuple):
    """One charge as the client saw it end."""

    request_id: str
    at: float  # unix time
    cost_nanoton: int
    broken: bool  # a stream broken off after its first token: charged by the proxy's count, no receipt possible
    voucher: Voucher  # the cumulative voucher its answer carried
    receipt: Receipt | None

    def to_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "at": round(self.at, 3), "cost_nanoton": self.cost_nanoton,
                "broken_stream": self.broken, "voucher": voucher_json(self.voucher),
                "receipt": self.receipt.to_base64() if self.receipt is not None else None}


def voucher_json(v: Voucher) -> dict[str, Any]:
    return {"tag": Tag(v.tag).name.lower(), "global_id": v.global_id, "contract": v.contract, "seqno": v.seqno,
            "amount_nanoton": v.amount, "signature": v.signature.hex()}


def dispute_evidence(book: ReceiptBook, vouchers: VoucherBook, request_id: str | None = None) -> list[dict[str, Any]]:
    """Per channel: the newest charge voucher kept, what the receipts held here back of it, what broken streams
    account for, and what nothing here backs (`contested_nanoton`: the amount to dispute), with every charge and
    its receipt (only `request_id`'s when given). A channel's vouchers are cumulative since it opened: charges from
    before this book, and answers whose end never reached the client, are in the contested amount too."""
    out = []
    for channel in book.channels():
        charges = book.charges(channel)
        latest = vouchers.latest(channel, Tag.CHARGE)
        backed = sum(c.cost_nanoton for c in charges if c.receipt is not None)
        broken = sum(c.cost_nanoton for c in charges if c.receipt is None and c.broken)
        unbacked = sum(c.cost_nanoton for c in charges if c.receipt is None and not c.broken)
        shown = [c for c in charges if request_id is None or c.request_id == request_id]
        if request_id is not None and not shown:
            continue
        out.append({"channel": channel, "voucher": voucher_json(latest) if latest else None,
                    "backed_nanoton": backed, "broken_stream_nanoton": broken, "unbacked_nanoton": unbacked,
                    "contested_nanoton": max((latest.amount if latest else 0) - backed - broken, 0),
                    "charges": [c.to_json() for c in shown]})
    return out
