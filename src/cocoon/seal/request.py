"""A request body sealed to the HPKE keys of its candidate workers (RFC 9180 base mode).

The body is encrypted once, with ChaCha20-Poly1305 under a random content key, and that key is wrapped by HPKE
(DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305) to each candidate worker: any of them can open it, so
the proxy may retry the request on another candidate without going back to the client. Each recipient's HPKE
context also exports the key its answer is sealed under (seal/answer.py), so an answer opens only with the context
of the one worker that made it.

    sealed = version(1) ‖ n(1) ‖ n × [key_id(8) ‖ enc(32) ‖ wrapped content key(48)] ‖ body ciphertext (len + 16)

`aad` (the request's cleartext envelope, chosen by the caller) is bound into every wrapped key and into the body,
and the body also binds the whole header: a changed byte anywhere, an added or removed recipient, or the same
ciphertext under another envelope fails to open. The body's plaintext length is its ciphertext's minus the tag,
so the proxy can bound a request's prompt without opening it.
"""

from __future__ import annotations

import hashlib
import heapq
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey, OpenError

from cocoon.core.errors import ErrorCode
from cocoon.seal.answer import ANSWER_KEY_LEN, AnswerOpener, AnswerSealer
from cocoon.seal.errors import SealError
from cocoon.seal.parts import PartOpener, PartSealer, parts_key

VERSION = 1
KEY_ID_LEN = 8
ENC_LEN = 32  # an X25519 encapsulated key
CONTENT_KEY_LEN = 32
TAG_LEN = 16
WRAPPED_LEN = CONTENT_KEY_LEN + TAG_LEN
RECIPIENT_LEN = KEY_ID_LEN + ENC_LEN + WRAPPED_LEN
MAX_RECIPIENTS = 16
_HEADER_LEN = 2
_SUITE = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.CHACHA20_POLY1305)
_INFO = b"cocoon sealed request v1\0"  # ‖ key id: a context is for one recipient
_KEY_ID_LABEL = b"cocoon seal key id v1\0"
_ANSWER_LABEL = b"cocoon sealed answer v1"
_BODY_NONCE = bytes(12)  # the content key is fresh for every request and encrypts one message


def key_id(public_key: bytes) -> bytes:
    """The 8-byte name of an X25519 public key in a sealed request (a hash: it tells nothing else of the key)."""
    return hashlib.sha256(_KEY_ID_LABEL + public_key).digest()[:KEY_ID_LEN]


def request_digest(sealed: bytes) -> bytes:
    """SHA-256 of a sealed request as it travelled: what the worker signs its usage over."""
    return hashlib.sha256(sealed).digest()


class Recipient(NamedTuple):
    key_id: bytes
    enc: bytes
    wrapped: bytes


class SealedInfo(NamedTuple):
    """What anyone can read of a sealed request without a key."""

    recipients: tuple[Recipient, ...]
    body_len: int  # the plaintext body's length in bytes

    @property
    def key_ids(self) -> tuple[bytes, ...]:
        return tuple(r.key_id for r in self.recipients)


def _malformed(what: str) -> SealError:
    return SealError(400, f"the sealed request is malformed: {what}", ErrorCode.SEALED_REQUEST_INVALID)


def peek(sealed: bytes) -> SealedInfo:
    """The recipients and plaintext length of a sealed request; SealError if it is not one."""
    if len(sealed) < _HEADER_LEN:
        raise _malformed(f"{len(sealed)} bytes, shorter than its header")
    version, count = sealed[0], sealed[1]
    if version != VERSION:
        raise _malformed(f"version {version}, this node reads version {VERSION}")
    if not 1 <= count <= MAX_RECIPIENTS:
        raise _malformed(f"{count} recipients, expected 1 to {MAX_RECIPIENTS}")
    body_at = _HEADER_LEN + count * RECIPIENT_LEN
    if len(sealed) < body_at + TAG_LEN:
        raise _malformed(f"{len(sealed)} bytes, too short for {count} recipients and a body")
    recipients = []
    for i in range(count):
        at = _HEADER_LEN + i * RECIPIENT_LEN
        recipients.append(Recipient(sealed[at:at + KEY_ID_LEN], sealed[at + KEY_ID_LEN:at + KEY_ID_LEN + ENC_LEN],
                                    sealed[at + KEY_ID_LEN + ENC_LEN:at + RECIPIENT_LEN]))
    if len({r.key_id for r in recipients}) != count:
        raise _malformed("a recipient key appears twice")
    return SealedInfo(tuple(recipients), len(sealed) - body_at - TAG_LEN)


@dataclass(frozen=True)
class SealedRequest:
    """The client's side of one sealed request: the bytes to send, and the answer keys of every recipient."""

    sealed: bytes
    _answer_keys: dict[bytes, bytes]
    _content_key: bytes = b""

    def parts(self) -> PartSealer:
        """A sealer of the body's parts from the first (a `parts` request's; each call starts again, giving the
        same bytes for the same parts)."""
        return PartSealer(parts_key(self._content_key))

    @property
    def key_ids(self) -> tuple[bytes, ...]:
        return tuple(self._answer_keys)

    def answer(self, served_by: bytes) -> AnswerOpener:
        """The opener of the answer made by the recipient `served_by` (its key id, named by the answer's head)."""
        key = self._answer_keys.get(served_by)
        if key is None:
            raise SealError(502, f"the answer names key {served_by.hex()}, none of the {len(self._answer_keys)} "
                                 "workers this request was sealed to", ErrorCode.SEALED_ANSWER_INVALID)
        return AnswerOpener(key)


def seal_request(body: bytes, public_keys: Sequence[bytes], aad: bytes) -> SealedRequest:
    """`body` sealed to each of `public_keys` (raw X25519, 1 to MAX_RECIPIENTS, duplicates dropped), bound to
    `aad`. The caller has verified each key's attestation: this only encrypts."""
    keys = list(dict.fromkeys(public_keys))
    if not 1 <= len(keys) <= MAX_RECIPIENTS:
        raise ValueError(f"a request is sealed to 1 to {MAX_RECIPIENTS} keys, not {len(keys)}")
    content_key = os.urandom(CONTENT_KEY_LEN)
    parts = [bytes([VERSION, len(keys)])]
    answers: dict[bytes, bytes] = {}
    for public_key in keys:
        kid = key_id(public_key)
        enc, ctx = _SUITE.create_sender_context(_SUITE.kem.deserialize_public_key(public_key), info=_INFO + kid)
        parts += (kid, enc, ctx.seal(content_key, aad=aad))
        answers[kid] = ctx.export(_ANSWER_LABEL, ANSWER_KEY_LEN)
    header = b"".join(parts)
    ciphertext = ChaCha20Poly1305(content_key).encrypt(_BODY_NONCE, body, header + aad)
    return SealedRequest(header + ciphertext, answers, content_key)


class OpenedRequest(NamedTuple):
    body: bytes
    enc: bytes  # this recipient's encapsulation: unique per request, what a replay guard remembers
    answer: AnswerSealer
    content_key: bytes = b""

    def parts(self) -> PartOpener:
        """The opener of the body's parts (a `parts` request's), from the first."""
        return PartOpener(parts_key(self.content_key))


class SealKey:
    """A worker's side: its HPKE private key, which opens requests sealed to it."""

    def __init__(self, private_key: X25519PrivateKey) -> None:
        self._key = KEMKey.from_pyca_cryptography_key(private_key)
        self.public_key = private_key.public_key().public_bytes_raw()
        self.key_id = key_id(self.public_key)

    def open(self, sealed: bytes, aad: bytes) -> OpenedRequest:
        """The body of a request sealed to this key under `aad`, and the sealer of its answer; SealError naming
        what was wrong (malformed, sealed to other keys, changed in transit or under another envelope)."""
        info = peek(sealed)
        mine = next((r for r in info.recipients if r.key_id == self.key_id), None)
        if mine is None:
            named = ", ".join(k.hex() for k in info.key_ids)
            raise SealError(400, f"the request is sealed to keys {named}, not to this worker's key "
                                 f"{self.key_id.hex()}", ErrorCode.SEAL_KEY_UNKNOWN)
        try:
            ctx = _SUITE.create_recipient_context(mine.enc, self._key, info=_INFO + self.key_id)
            content_key = ctx.open(mine.wrapped, aad=aad)
        except (OpenError, ValueError):
            raise SealError(400, "the sealed request's content key does not open with this worker's key: its "
                                 "encapsulation or wrapped key was changed, or it was sealed under another envelope",
                            ErrorCode.SEALED_REQUEST_INVALID) from None
        body_at = _HEADER_LEN + len(info.recipients) * RECIPIENT_LEN
        try:
            body = ChaCha20Poly1305(content_key).decrypt(_BODY_NONCE, sealed[body_at:], sealed[:body_at] + aad)
        except InvalidTag:
            raise SealError(400, "the sealed request's body does not open: its ciphertext or header was changed, "
                                 "or it was sealed under another envelope", ErrorCode.SEALED_REQUEST_INVALID) from None
        return OpenedRequest(body, mine.enc, AnswerSealer(ctx.export(_ANSWER_LABEL, ANSWER_KEY_LEN)), content_key)


class ReplayGuard:
    """The encapsulations a worker opened, each kept until its request's deadline: the same sealed request sent
    again (by a proxy or anyone on the path) is refused, so it is never run twice. A request must name a deadline
    within `max_ttl_s` (the envelope binds it), so nothing is remembered longer. Past `max_entries` the entry that
    expires first is forgotten and its deadline becomes a horizon: a request expiring no later is refused as
    stale, since a replay of it could no longer be told."""

    def __init__(self, max_ttl_s: float = 3600.0, max_entries: int = 200_000) -> None:
        self.max_ttl_s = max_ttl_s
        self.max_entries = max_entries
        self._seen: set[bytes] = set()
        self._expiry: list[tuple[float, bytes]] = []
        self._horizon = float("-inf")

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, enc: bytes, deadline: float, now: float) -> None:
        """Remember `enc` until `deadline`; SealError if it was seen, or if the deadline passed or lies too far."""
        while self._expiry and self._expiry[0][0] < now:
            self._seen.discard(heapq.heappop(self._expiry)[1])
        if deadline < now or deadline <= self._horizon:
            raise SealError(400, "the sealed request's deadline has passed: it is stale or replayed",
                            ErrorCode.SEALED_REQUEST_REPLAYED)
        if deadline > now + self.max_ttl_s:
            raise SealError(400, f"the sealed request's deadline is more than {self.max_ttl_s:.0f} s away",
                            ErrorCode.SEALED_REQUEST_INVALID)
        if enc in self._seen:
            raise SealError(409, "this sealed request was opened here before: a replayed encapsulation is "
                                 "never run twice", ErrorCode.SEALED_REQUEST_REPLAYED)
        if len(self._seen) >= self.max_entries:
            forgotten, old = heapq.heappop(self._expiry)
            self._seen.discard(old)
            self._horizon = max(self._horizon, forgotten)
        self._seen.add(enc)
        heapq.heappush(self._expiry, (deadline, enc))
