"""The worker's receipts: one per answer, signed with its attested RA-TLS key (ledger/receipts.py says what a
receipt states and which bytes its hashes cover)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cocoon.config import Prices
from cocoon.core.usage import Usage
from cocoon.ledger.pricing import price_request
from cocoon.ledger.receipts import Receipt, Sign, request_digest
from cocoon.seal import request_digest as sealed_request_digest
from cocoon.wire.messages import Request


@dataclass(frozen=True)
class Notary:
    """What every receipt of this worker states besides the answer: its key (and signer), image, weights and price.
    `prices`: the registry's current prices, when this worker reads the registry (its cost is then priced)."""

    sign: Sign
    worker_key: bytes
    coefficient: int
    image_hash: bytes = b""
    model_hash: bytes = b""
    model_hash_declared: bool = False
    prices: Callable[[], Prices] | None = None

    def receipt(self, req: Request, usage: Usage, answer_hash: bytes, *, body: bytes | None = None,
                sealed_answer_hash: bytes = b"", content_digest: bytes = b"", request_hash: bytes = b"",
                sealed_request_hash: bytes = b"") -> Receipt:
        """The signed receipt of one answer. `body`: the plaintext body run (a sealed request's, once opened; by
        default `req.body`). A sealed request's receipt also states the hashes of the sealed request and answer as
        they crossed the proxy (`sealed_answer_hash`: cocoon.seal.AnswerDigest), which the proxy checks; a request
        marked deterministic, what the answer said (`content_digest`: cocoon.openai.content).
        `request_hash` / `sealed_request_hash`: a body in parts (a media job) is hashed with its parts
        (ledger/receipts.py `parts_digest`) by its caller, who saw them."""
        cost = price_request(usage, self.prices(), self.coefficient).client_cost if self.prices else None
        sealed = {"sealed_request_hash": sealed_request_hash or sealed_request_digest(req.body),
                  "sealed_answer_hash": sealed_answer_hash} if req.sealed else {}
        return Receipt(request_id=req.request_id,
                       request_hash=request_hash or request_digest(req.body if body is None else body),
                       answer_hash=answer_hash, model=req.model, usage=usage, coefficient=self.coefficient,
                       worker_key=self.worker_key, issued_at=int(time.time()), endpoint=req.endpoint,
                       model_hash=self.model_hash, model_hash_declared=self.model_hash_declared, cost_nanoton=cost,
                       image_hash=self.image_hash, content_digest=content_digest, **sealed).sign(self.sign)
