"""The proxy's side of receipts (ledger/receipts.py): check what the worker signed against what the proxy knows of
the request and the worker's link, then countersign it with the charge and the voucher.

The proxy never parses answers, so the answer hash is the client's to check; everything else a worker signs is
checked here: its signature by the key of the attested link the answer came on, the request (id, model, body
hash), the usage it reported, its coefficient and image hash. A receipt that fails is not countersigned: the
answer reaches the client without one, and the failure counts against the worker.

A sealed request (cocoon/seal) is opaque here: the plaintext hashes are the client's to check, and the proxy checks
instead the hashes of the sealed request and of the sealed answer as it relayed them (`sealed_answer_hash`,
cocoon.seal.AnswerDigest over each sealed chunk and the end marker). Usage crossing the proxy is then signed by the
worker over exactly what the proxy saw, and the proxy checks it before it settles (proxy/forwarding.py). A sealed
request marked deterministic must have its answer's content digest signed too: spot checks compare runs by it, and
the client checks it against the answer it opened.
"""

from __future__ import annotations

import time

from cocoon.attest.types import PeerIdentity
from cocoon.core.usage import Usage
from cocoon.ledger.books import Settled
from cocoon.ledger.receipts import Receipt, ReceiptError, request_digest
from cocoon.ledger.wallet import Wallet
from cocoon.seal import request_digest as sealed_request_digest
from cocoon.wire.messages import Request


def check_receipt(receipt: Receipt | None, *, req: Request, worker: PeerIdentity, coefficient: int,
                  reported: Usage, sealed_answer_hash: bytes = b"", request_hash: bytes = b"") -> Receipt:
    """`receipt` if the worker on this link signed it for this request and this usage (and, for a sealed request,
    over the sealed request and the sealed answer `sealed_answer_hash` as relayed); ReceiptError otherwise.
    `request_hash`: the hash of the request as relayed when its body came in parts (a media job: the parts are the
    proxy's to hash, ledger/receipts.py `parts_digest`); by default that of `req.body`."""
    relayed = request_hash or (sealed_request_digest(req.body) if req.sealed else request_digest(req.body))
    if receipt is None:
        raise ReceiptError("the worker sent no receipt")
    receipt.verify_worker()
    if receipt.worker_key != worker.public_key:
        raise ReceiptError("the receipt is signed by another key than the worker's attested one")
    mismatches = [name for name, ok in (
        ("request_id", receipt.request_id == req.request_id),
        ("model", receipt.model == req.model),
        ("endpoint", receipt.endpoint == req.endpoint),
        *((("sealed_request_hash", receipt.sealed_request_hash == relayed),
           ("sealed_answer_hash", receipt.sealed_answer_hash == sealed_answer_hash),
           # what spot checks compare two workers' runs of a request marked deterministic by (proxy/rerun.py)
           ("content_digest", bool(receipt.content_digest) or not req.deterministic)) if req.sealed else
          (("request_hash", receipt.request_hash == relayed),)),
        ("usage", receipt.usage == reported),
        ("coefficient", receipt.coefficient == coefficient),
        ("image_hash", receipt.image_hash == (worker.image_hash or b"")),
        ("model_hash", receipt.model_hash == worker.model_hash),
    ) if not ok]
    if mismatches:
        raise ReceiptError(f"the receipt does not match the request or the worker's link: {', '.join(mismatches)}")
    return receipt


def countersign(receipt: Receipt, key: Wallet, settled: Settled, coefficient: int) -> Receipt:
    """`receipt` with what the proxy charged for it and the voucher including it, signed by its voucher `key`."""
    return receipt.countersign(key.sign, key.public_key, usage=settled.usage, cost_nanoton=settled.charge.client_cost,
                               coefficient=coefficient, voucher=settled.client_voucher, signed_at=int(time.time()))
