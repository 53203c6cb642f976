"""Receipts: what a worker signs about each answer it produced, and what the proxy adds when it charges for it.

A `Receipt` is one statement, signed in two layers (no I/O here: building, encoding, signing and checking):

- the **worker** signs, with its attested RA-TLS key (`worker_key`, the key its certificate and quote name), the
  request id, the SHA-256 of the request body it ran (`request_hash`), the hash of the answer payloads it sent
  (`answer_hash`), the model and the SHA-256 of its weights, the usage it reported, its coefficient and, when it
  reads the registry's prices, the cost they give; its image hash and the time. A sealed request (issue 10) adds
  the hashes of the sealed request and answer, which a proxy can check without the plaintext; a request marked
  deterministic adds the answer's content digest (cocoon/openai/content.py), what spot checks compare;
- the **proxy** countersigns the worker's statement (its digest) with what it charged (usage held to the
  request's bounds, cost, coefficient) and the cumulative charge voucher that includes it, with its voucher key
  (the key the root registry lists for it and its channels verify). The voucher is named by the hash its own
  signature covers (`Voucher.signed_hash`), not carried: whoever holds the voucher can match it, and an answer
  shown to someone who does not pay for it (a device behind a relay) does not reveal the payer's channel.

Canonical encoding: MessagePack of the struct (fields in declaration order, defaults omitted), so what is signed
is re-derived from any decoded receipt; a receipt travels as that encoding, in base64 where it crosses HTTP.

Which bytes `answer_hash` covers, so that whoever holds the answer can recompute it (`answer_digest`): the
payloads the client receives, in order: the JSON body of a non-streamed answer, or the `data` of each event of a
stream except `[DONE]`; each taken as is, except a payload that is a JSON object with a `usage` object: the client
API adds `usage.cost_nanoton` and `usage.receipt` to it, so it is taken without those two keys, re-encoded in
msgspec's compact JSON (keys in their order, no spaces). Then

    answer_hash = SHA-256( Σ  len(payload) as 8 bytes big-endian ‖ payload )

`request_hash` is the plain SHA-256 of the request body as the worker received it (the client API's compact
re-encoding of what the app sent: `cocoon receipt verify` redoes that encoding).

A media job (endpoint `media`) has a body in parts and a binary answer, so its hashes cover files, whatever the
parts they travelled in: `request_hash` = SHA-256(SHA-256(the job's JSON) ‖ SHA-256(the input file))
(`parts_digest`), `answer_hash` = SHA-256(the output file), what `sha256sum` prints for it. A sealed job's
`sealed_request_hash` is `parts_digest` of the sealed job and its sealed parts concatenated as they travelled.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from cocoon.core.errors import DECODE_ERRORS, CocoonError
from cocoon.core.usage import Usage
from cocoon.ledger.vouchers import Voucher

RECEIPT_VERSION = 1
_WORKER_DOMAIN = b"cocoon-receipt-v1\0"
_PROXY_DOMAIN = b"cocoon-receipt-countersignature-v1\0"
ADDED_USAGE_KEYS = ("cost_nanoton", "receipt")  # what the client API adds to an answer's `usage` object
MAX_ENCODED = 64 * 1024  # a receipt is a few hundred bytes: anything far larger is not one

Sign = Callable[[bytes], bytes]  # an Ed25519 signer: raw 64-byte signature over the message


class ReceiptError(ValueError, CocoonError):
    """A receipt that does not hold; the message says exactly why."""


class Countersignature(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """The proxy's part: what it charged for the answer the worker's statement describes, and the voucher."""

    proxy_key: bytes  # raw Ed25519 voucher key of the proxy (as the root registry lists it)
    usage: Usage  # what was charged: the worker's usage held to the request's bounds
    cost_nanoton: int
    coefficient: int  # the worker's price coefficient (per-mille) the cost was priced at
    signed_at: int  # unix seconds
    # the cumulative charge voucher that includes this charge (payments on), by its signed hash
    voucher_hash: bytes = b""
    signature: bytes = b""

    def names(self, voucher: Voucher | None) -> bool:
        """Whether this is the charge voucher named here (none named: none given)."""
        return self.voucher_hash == (voucher.signed_hash() if voucher is not None else b"")


class Receipt(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """One answer, as its worker signed it (`signature`) and, once charged, as its proxy countersigned it."""

    request_id: str
    request_hash: bytes  # SHA-256 of the plaintext request body (request_digest)
    answer_hash: bytes  # over the plaintext answer payloads in order (answer_digest)
    model: str
    usage: Usage  # as the worker reported it
    coefficient: int  # the worker's price coefficient, per-mille
    worker_key: bytes  # the worker's raw Ed25519 RA-TLS key: the one its attested certificate names
    issued_at: int  # unix seconds
    version: int = RECEIPT_VERSION
    endpoint: str = ""  # chat | completions
    model_hash: bytes = b""  # SHA-256 of the weights served; empty when the worker cannot tell
    model_hash_declared: bool = False  # the hash is what the operator declared (an `openai:` engine), not measured
    cost_nanoton: int | None = None  # the usage at the registry's prices and `coefficient`; None: not priced
    image_hash: bytes = b""  # SHA-256 over the worker's measurements, as its quote gives them
    sealed_request_hash: bytes = b""  # issue 10: the sealed request as it crossed the proxy
    sealed_answer_hash: bytes = b""  # issue 10: the sealed answer payloads
    # what the answer says (cocoon.openai.content: per choice its text, tool calls and finish reason), signed for a
    # request marked deterministic: the proxy compares two workers' runs of a sealed request by it, and the client,
    # which opens the answer, checks it against what it received. Empty: not stated
    content_digest: bytes = b""
    signature: bytes = b""  # the worker's, over `signed_bytes()`
    countersignature: Countersignature | None = None

    # ---- the worker's layer ----
    def signed_bytes(self) -> bytes:
        """What the worker signs: the canonical encoding without either signature."""
        unsigned = msgspec.structs.replace(self, signature=b"", countersignature=None)
        return _WORKER_DOMAIN + msgspec.msgpack.encode(unsigned)

    def digest(self) -> bytes:
        """The receipt's identity: SHA-256 over the worker's statement and signature (what the proxy signs)."""
        return hashlib.sha256(self.signed_bytes() + self.signature).digest()

    def sign(self, sign: Sign) -> Receipt:
        """This statement signed by the worker key `sign` holds (the one named in `worker_key`)."""
        return msgspec.structs.replace(self, signature=sign(self.signed_bytes()), countersignature=None)

    def verify_worker(self) -> None:
        """Raise ReceiptError unless `worker_key` signed this statement (whether that key is attested is the
        caller's check: its certificate, `cocoon receipt verify --cert`)."""
        self._check_shape()
        _verify(self.worker_key, self.signed_bytes(), self.signature, "the worker's signature")

    def _check_shape(self) -> None:
        if self.version != RECEIPT_VERSION:
            raise ReceiptError(f"receipt version {self.version} is not {RECEIPT_VERSION}")
        for name in ("request_hash", "answer_hash"):
            if len(getattr(self, name)) != 32:
                raise ReceiptError(f"the receipt's {name} is not a SHA-256 (32 bytes)")
        for name in ("model_hash", "image_hash", "sealed_request_hash", "sealed_answer_hash", "content_digest"):
            value = getattr(self, name)
            if value and len(value) != 32:
                raise ReceiptError(f"the receipt's {name} is not a SHA-256 (32 bytes)")

    # ---- the proxy's layer ----
    def countersign(self, sign: Sign, proxy_key: bytes, *, usage: Usage, cost_nanoton: int, coefficient: int,
                    voucher: Voucher | None, signed_at: int) -> Receipt:
        """This receipt with the proxy's charge and voucher, signed by its voucher key (`sign`, `proxy_key`)."""
        unsigned = Countersignature(proxy_key=proxy_key, usage=usage, cost_nanoton=cost_nanoton,
                                    coefficient=coefficient, signed_at=signed_at,
                                    voucher_hash=voucher.signed_hash() if voucher is not None else b"")
        signed = msgspec.structs.replace(unsigned, signature=sign(self._countersigned_bytes(unsigned)))
        return msgspec.structs.replace(self, countersignature=signed)

    def _countersigned_bytes(self, counter: Countersignature) -> bytes:
        return _PROXY_DOMAIN + self.digest() + msgspec.msgpack.encode(msgspec.structs.replace(counter, signature=b""))

    def verify_proxy(self, proxy_key: bytes | None = None) -> Countersignature:
        """The countersignature, once checked: present, signed by its `proxy_key` (which must be `proxy_key` when
        given) over this worker statement; ReceiptError otherwise."""
        counter = self.countersignature
        if counter is None:
            raise ReceiptError("the receipt has no countersignature by the proxy")
        if proxy_key is not None and counter.proxy_key != proxy_key:
            raise ReceiptError(f"the receipt is countersigned by key {counter.proxy_key.hex()[:16]}…, not by the "
                               f"proxy's voucher key {proxy_key.hex()[:16]}…")
        _verify(counter.proxy_key, self._countersigned_bytes(counter), counter.signature,
                "the proxy's countersignature")
        return counter

    def verify(self, proxy_key: bytes | None = None) -> Countersignature:
        """Both signatures (the countersignature by `proxy_key` when given)."""
        self.verify_worker()
        return self.verify_proxy(proxy_key)

    # ---- encoding ----
    def encode(self) -> bytes:
        return msgspec.msgpack.encode(self)

    def to_base64(self) -> str:
        return base64.b64encode(self.encode()).decode()

    @staticmethod
    def decode(data: bytes) -> Receipt:
        if len(data) > MAX_ENCODED:
            raise ReceiptError(f"{len(data)} bytes is too large for a receipt")
        try:
            return _DECODER.decode(data)
        except (*DECODE_ERRORS, ValueError, TypeError) as exc:
            raise ReceiptError(f"not a receipt: {exc}") from None

    @staticmethod
    def from_base64(text: str | bytes) -> Receipt:
        """A receipt as the client API hands it out (the `x-cocoon-receipt` header, `usage.receipt`)."""
        if isinstance(text, str):
            try:
                text = text.strip().encode("ascii")
            except UnicodeEncodeError:
                raise ReceiptError("a receipt is base64: ASCII only") from None
        if len(text) > MAX_ENCODED * 4 // 3 + 4:
            raise ReceiptError(f"{len(text)} characters is too long for a receipt")
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ReceiptError(f"a receipt is base64: {exc}") from None
        return Receipt.decode(raw)


_DECODER = msgspec.msgpack.Decoder(Receipt)


def _verify(key: bytes, message: bytes, signature: bytes, what: str) -> None:
    try:
        VerifyKey(key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError) as exc:
        raise ReceiptError(f"{what} does not verify: the receipt was altered or signed by another key") from exc


# ---- what the hashes cover ----
def request_digest(body: bytes) -> bytes:
    """SHA-256 of the request body as the worker received it."""
    return hashlib.sha256(body).digest()


def parts_digest(body: bytes, parts_sha256: bytes) -> bytes:
    """The request hash of a body continued in parts (a media job): SHA-256(SHA-256(`body`) ‖ `parts_sha256`, the
    SHA-256 of the parts' data concatenated in order)."""
    return hashlib.sha256(request_digest(body) + parts_sha256).digest()


def answer_payload(payload: bytes) -> bytes:
    """`payload` as `answer_hash` covers it: as is, unless it is a JSON object with a `usage` object, which is
    taken without the keys the client API adds to it (ADDED_USAGE_KEYS), in msgspec's compact JSON."""
    try:
        doc = msgspec.json.decode(payload)
    except DECODE_ERRORS:
        return payload
    if not isinstance(doc, dict) or not isinstance(doc.get("usage"), dict):
        return payload
    usage: dict[str, Any] = doc["usage"]
    for key in ADDED_USAGE_KEYS:
        usage.pop(key, None)
    return msgspec.json.encode(doc)


class AnswerHasher:
    """`answer_hash` computed as the payloads go by (the worker's side: `has_usage` says whether a payload carries
    a usage object, so that the others are never parsed twice)."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, payload: bytes, *, has_usage: bool | None = None) -> None:
        if has_usage is not False:  # unknown (None) or True: parsed
            payload = answer_payload(payload)
        self._h.update(len(payload).to_bytes(8, "big"))
        self._h.update(payload)

    def digest(self) -> bytes:
        return self._h.digest()


def answer_digest(payloads: Iterable[bytes]) -> bytes:
    """`answer_hash` of the payloads a client received, in order (see the module's docstring)."""
    hasher = AnswerHasher()
    for payload in payloads:
        hasher.update(payload)
    return hasher.digest()
