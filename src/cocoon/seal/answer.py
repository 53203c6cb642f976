"""An answer sealed chunk by chunk under the key its request's HPKE context exported (seal/request.py).

Chunk i (from 0) is ChaCha20-Poly1305 under that key with nonce = base_nonce XOR i, like HPKE's own sequence;
after the last chunk comes an end marker, sealed at the next sequence number with another associated data. So
the opener, which counts the chunks itself, notices a chunk changed (tag), dropped, reordered or replayed (the
next chunk's nonce no longer matches), and an answer cut short (no end marker, or one that does not open at the
count it has seen).
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from cocoon.core.errors import ErrorCode
from cocoon.seal.errors import SealError

_KEY_LEN = 32
_NONCE_LEN = 12
ANSWER_KEY_LEN = _KEY_LEN + _NONCE_LEN  # what a request's HPKE context exports for its answer
_CHUNK = b"\x00"  # associated data of a chunk
_END = b"\x01"  # ... and of the end marker


def _nonce(base: int, seq: int) -> bytes:
    return (base ^ seq).to_bytes(_NONCE_LEN, "big")


def _invalid(message: str) -> SealError:
    return SealError(502, message, ErrorCode.SEALED_ANSWER_INVALID)


class _Sequence:
    __slots__ = ("_aead", "_base", "ended", "seq")

    def __init__(self, key: bytes) -> None:
        if len(key) != ANSWER_KEY_LEN:
            raise ValueError(f"an answer key is {ANSWER_KEY_LEN} bytes, not {len(key)}")
        self._aead = ChaCha20Poly1305(key[:_KEY_LEN])
        self._base = int.from_bytes(key[_KEY_LEN:], "big")
        self.seq = 0  # chunks sealed or opened so far
        self.ended = False


class AnswerSealer(_Sequence):
    """The worker's side: seals each chunk in order, then the end marker."""

    def seal(self, chunk: bytes) -> bytes:
        if self.ended:
            raise ValueError("the answer already ended")
        sealed = self._aead.encrypt(_nonce(self._base, self.seq), chunk, _CHUNK)
        self.seq += 1
        return sealed

    def end(self, trailer: bytes = b"") -> bytes:
        """The end marker after the last chunk (carrying `trailer`, if any)."""
        if self.ended:
            raise ValueError("the answer already ended")
        self.ended = True
        return self._aead.encrypt(_nonce(self._base, self.seq), trailer, _END)


class AnswerOpener(_Sequence):
    """The client's side: opens each chunk in the order it arrives, then checks the end marker."""

    def open(self, sealed: bytes) -> bytes:
        if self.ended:
            raise _invalid("a sealed answer chunk arrived after the answer's end marker: it was replayed")
        try:
            chunk = self._aead.decrypt(_nonce(self._base, self.seq), sealed, _CHUNK)
        except InvalidTag:
            raise _invalid(f"sealed answer chunk {self.seq} does not open: a chunk was changed, dropped, reordered "
                           "or replayed on the way") from None
        self.seq += 1
        return chunk

    def end(self, sealed_end: bytes) -> bytes:
        """The trailer of the end marker; raises when the answer was cut short or the marker forged."""
        if self.ended:
            raise _invalid("the sealed answer's end marker arrived twice")
        if not sealed_end:
            raise _invalid(f"the answer ended after {self.seq} chunks without its sealed end marker: it was cut "
                           "short on the way")
        try:
            trailer = self._aead.decrypt(_nonce(self._base, self.seq), sealed_end, _END)
        except InvalidTag:
            raise _invalid(f"the sealed answer's end marker does not open after {self.seq} chunks: chunks were "
                           "dropped at its end, or the marker was changed") from None
        self.ended = True
        return trailer


class AnswerDigest:
    """SHA-256 over a sealed answer as it travels: each sealed chunk, then the end marker, each length-prefixed.
    The worker signs its usage over it and the proxy, which relays the same bytes, checks that signature."""

    __slots__ = ("_hash",)

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, sealed: bytes) -> None:
        self._hash.update(len(sealed).to_bytes(4, "big"))
        self._hash.update(sealed)

    def digest(self) -> bytes:
        return self._hash.digest()
