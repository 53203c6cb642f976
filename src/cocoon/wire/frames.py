"""Length-prefixed frames: 4-byte big-endian length, then one MessagePack-encoded message."""

from __future__ import annotations

import msgspec

from cocoon.core.errors import DECODE_ERRORS, CocoonError
from cocoon.wire.messages import Message

MAX_FRAME = 16 * 1024 * 1024
_HEADER = 4
_MAX_REASON = 200  # msgspec quotes a bad tag whole: the reason goes to logs and back to the peer

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


class FrameError(ValueError, CocoonError):
    """The peer sent bytes that are not a valid frame: the connection cannot continue."""


def encode(msg: Message) -> bytes:
    # Reserve the header in the same buffer msgspec writes into: one allocation per frame.
    buf = bytearray(_HEADER)
    _encoder.encode_into(msg, buf, _HEADER)
    size = len(buf) - _HEADER
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes exceeds the {MAX_FRAME}-byte limit")
    buf[:_HEADER] = size.to_bytes(_HEADER, "big")
    return bytes(buf)


class FrameReader:
    """Accumulates stream bytes and yields complete messages.

    What it holds between feeds is at most one incomplete frame, whose header was already checked against
    `max_frame`: a peer announcing a larger frame is refused at its header, before any of the body is kept.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held of the frame not yet complete: always under `_HEADER + max_frame` after a feed."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        buf = self._buf
        pos = 0
        with memoryview(buf) as view:  # released before the buffer is trimmed below
            while len(buf) - pos >= _HEADER:
                size = int.from_bytes(view[pos : pos + _HEADER], "big")
                if size > self.max_frame:
                    raise FrameError(f"peer announced a {size}-byte frame, over the {self.max_frame}-byte limit")
                end = pos + _HEADER + size
                if len(buf) < end:
                    break
                try:
                    out.append(_decoder.decode(view[pos + _HEADER : end]))
                # RecursionError too: nesting deeper than msgspec follows (found by tests/fuzz)
                except (*DECODE_ERRORS, RecursionError) as exc:
                    raise FrameError(f"undecodable message: {_shorten(str(exc))}") from None
                pos = end
        if pos:
            del buf[:pos]
        return out


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON] + "..."
