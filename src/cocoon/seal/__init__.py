"""End-to-end sealing of requests and answers (issue 10; docs/ARCHITECTURE.md §2 "Sealed requests").

Sans-IO: bytes in, bytes out, no sockets and no clock of its own, so the client, the worker, the SDK and the
relay's gateway all share it. The stable API:

- `seal_request(body, public_keys, aad)` (client) → `SealedRequest`: `.sealed` (the bytes that travel) and
  `.answer(key_id)`, the `AnswerOpener` for the worker that answered.
- `SealKey(private_key)` (worker): `.key_id`, `.open(sealed, aad)` → `OpenedRequest` (`.body`, `.enc`,
  `.answer`, an `AnswerSealer`).
- `peek(sealed)` (proxy, no key): the recipients' key ids and the body's plaintext length (for the reservation).
- `AnswerSealer.seal(chunk)` / `.end(trailer)`; `AnswerOpener.open(chunk)` / `.end(sealed_end)`.
- `AnswerDigest` (worker and proxy): the hash of a sealed answer in order, what usage is signed over.
- `SealedRequest.parts()` → `PartSealer` (client), `OpenedRequest.parts()` → `PartOpener` (worker): a `parts`
  request's body (the media workload's input) sealed part by part (seal/parts.py).
- `ReplayGuard` (worker): refuses an encapsulation seen before.
- `key_id(public_key)`; `SealError`, an `ApiError` whose code names what was wrong.
"""

from cocoon.seal.answer import AnswerDigest, AnswerOpener, AnswerSealer
from cocoon.seal.errors import SealError
from cocoon.seal.parts import PartOpener, PartSealer
from cocoon.seal.request import (
    MAX_RECIPIENTS,
    OpenedRequest,
    ReplayGuard,
    SealedInfo,
    SealedRequest,
    SealKey,
    key_id,
    peek,
    request_digest,
    seal_request,
)

__all__ = [
    "MAX_RECIPIENTS",
    "AnswerDigest",
    "AnswerOpener",
    "AnswerSealer",
    "OpenedRequest",
    "PartOpener",
    "PartSealer",
    "ReplayGuard",
    "SealError",
    "SealKey",
    "SealedInfo",
    "SealedRequest",
    "key_id",
    "peek",
    "request_digest",
    "seal_request",
]
