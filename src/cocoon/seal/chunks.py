"""A message sealed piece by piece under one key and base nonce: the one construction of sealed answers
(seal/answer.py) and of sealed request parts (seal/parts.py).

Piece i (from 0) is ChaCha20-Poly1305 under the key with nonce = base_nonce XOR i, like HPKE's own sequence; the
sequence ends with an end marker sealed at the next number under another associated data (it may carry data of
its own). So the opener, which counts the pieces itself, notices a piece changed (tag), dropped, reordered or
replayed (the next piece's nonce no longer matches), and a sequence cut short (no end marker, or one that does not
open at the count it has seen). The hash of a sequence as it travels (`ChunkDigest`) is what a worker signs and
the proxy, which relays the same bytes, checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from cocoon.core.errors import ErrorCode
from cocoon.seal.errors import SealError

_KEY_LEN = 32
_NONCE_LEN = 12
CHUNK_KEY_LEN = _KEY_LEN + _NONCE_LEN  # a sequence's key and base nonce
_CHUNK = b"\x00"  # associated data of a piece
_END = b"\x01"  # ... and of the end marker


def _nonce(base: int, seq: int) -> bytes:
    return (base ^ seq).to_bytes(_NONCE_LEN, "big")


class _Sequence:
    __slots__ = ("_aead", "_base", "ended", "seq")

    def __init__(self, key: bytes) -> None:
        if len(key) != CHUNK_KEY_LEN:
            raise ValueError(f"a sealed sequence's key is {CHUNK_KEY_LEN} bytes, not {len(key)}")
        self._aead = ChaCha20Poly1305(key[:_KEY_LEN])
        self._base = int.from_bytes(key[_KEY_LEN:], "big")
        self.seq = 0  # pieces sealed or opened so far
        self.ended = False


class ChunkSealer(_Sequence):
    """The sender's side: seals each piece in order, then the end marker."""

    __slots__ = ()

    def seal(self, chunk: bytes) -> bytes:
        if self.ended:
            raise ValueError("the sealed sequence already ended")
        sealed = self._aead.encrypt(_nonce(self._base, self.seq), chunk, _CHUNK)
        self.seq += 1
        return sealed

    def end(self, trailer: bytes = b"") -> bytes:
        """The end marker after the last piece (carrying `trailer`, if any)."""
        if self.ended:
            raise ValueError("the sealed sequence already ended")
        self.ended = True
        return self._aead.encrypt(_nonce(self._base, self.seq), trailer, _END)


class ChunkOpener(_Sequence):
    """The receiver's side: opens each piece in the order it arrives, then checks the end marker. Subclasses name
    what the sequence is (`WHAT`, `PIECE`) and the error a failure is (`STATUS`, `CODE`)."""

    __slots__ = ()
    WHAT = "answer"
    PIECE = "chunk"
    STATUS = 502
    CODE = ErrorCode.SEALED_ANSWER_INVALID

    def _invalid(self, message: str) -> SealError:
        return SealError(self.STATUS, message, self.CODE)

    def open(self, sealed: bytes) -> bytes:
        what, piece = self.WHAT, self.PIECE
        if self.ended:
            raise self._invalid(f"a sealed {what} {piece} arrived after the {what}'s end marker: it was replayed")
        try:
            chunk = self._aead.decrypt(_nonce(self._base, self.seq), sealed, _CHUNK)
        except InvalidTag:
            raise self._invalid(f"sealed {what} {piece} {self.seq} does not open: a {piece} was changed, dropped, "
                                "reordered or replayed on the way") from None
        self.seq += 1
        return chunk

    def end(self, sealed_end: bytes) -> bytes:
        """The trailer of the end marker; raises when the sequence was cut short or the marker forged."""
        what, piece = self.WHAT, self.PIECE
        if self.ended:
            raise self._invalid(f"the sealed {what}'s end marker arrived twice")
        if not sealed_end:
            raise self._invalid(f"the {what} ended after {self.seq} {piece}s without its sealed end marker: it was "
                                "cut short on the way")
        try:
            trailer = self._aead.decrypt(_nonce(self._base, self.seq), sealed_end, _END)
        except InvalidTag:
            raise self._invalid(f"the sealed {what}'s end marker does not open after {self.seq} {piece}s: {piece}s "
                                "were dropped at its end, or the marker was changed") from None
        self.ended = True
        return trailer


class ChunkDigest:
    """SHA-256 over a sealed sequence as it travels: each sealed piece, then the end marker, each length-prefixed.
    The worker signs its usage over it and the proxy, which relays the same bytes, checks that signature."""

    __slots__ = ("_hash",)

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, sealed: bytes) -> None:
        self._hash.update(len(sealed).to_bytes(4, "big"))
        self._hash.update(sealed)

    def digest(self) -> bytes:
        return self._hash.digest()

    @classmethod
    def over(cls, pieces: Iterable[bytes], end: bytes) -> bytes:
        """The digest of a whole sealed sequence: its pieces in order, then its end marker."""
        digest = cls()
        for piece in pieces:
            digest.add(piece)
        digest.add(end)
        return digest.digest()
