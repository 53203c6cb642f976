"""A request body continued in parts (the media workload's input, wire/parts.py), sealed part by part in the
construction of seal/chunks.py: each part but the last as a piece, the last as the end marker carrying its data.
So a part changed, dropped, reordered or repeated on the way, or an upload cut short (an earlier part marked last,
or the last one not), does not open: 400 `sealed_request_invalid`, before anything runs.

The key is derived from the request's content key (seal/request.py), which every candidate worker unwraps: the
parts are sealed once, whichever candidate the proxy routes the job to, and sealing them again from the first
(when the proxy moves the job to another worker and asks for them again) gives the very same bytes.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from cocoon.core.errors import ErrorCode
from cocoon.seal.chunks import CHUNK_KEY_LEN, ChunkOpener, ChunkSealer

_LABEL = b"cocoon sealed request parts v1"


def parts_key(content_key: bytes) -> bytes:
    """The key and base nonce of a request's parts (the content key is random: expanding it is enough)."""
    return HKDFExpand(hashes.SHA256(), CHUNK_KEY_LEN, _LABEL).derive(content_key)


class PartSealer(ChunkSealer):
    """The client's side: each part in order, the last one as the end marker."""

    __slots__ = ()

    def part(self, data: bytes, last: bool) -> bytes:
        return self.end(data) if last else self.seal(data)


class PartOpener(ChunkOpener):
    """The worker's side: each part as it arrives; SealError (400) at the first that does not open."""

    __slots__ = ()
    WHAT = "upload"
    PIECE = "part"
    STATUS = 400
    CODE = ErrorCode.SEALED_REQUEST_INVALID

    def part(self, sealed: bytes, last: bool) -> bytes:
        return self.end(sealed) if last else self.open(sealed)
