"""Fields added for routing keep the wire compatible: an older peer's messages decode, and ours decode there."""

from __future__ import annotations

import msgspec

from cocoon.core.usage import Usage
from cocoon.wire import frames
from cocoon.wire.messages import Request, ResponseChunk, ResponseError


class OldRequest(msgspec.Struct, tag="req", tag_field="t"):
    id: int
    endpoint: str
    model: str
    body: bytes
    stream: bool
    include_usage: bool
    deadline: float
    uid: str = ""
    max_coefficient: int | None = None
    features: list[str] = []


class OldChunk(msgspec.Struct, tag="chunk", tag_field="t"):
    id: int
    data: bytes


class OldError(msgspec.Struct, tag="error", tag_field="t"):
    id: int
    status: int
    message: str
    type: str = "api_error"
    code: str | None = None
    retry_after: int | None = None


def test_old_messages_decode_with_defaults() -> None:
    old = OldRequest(id=1, endpoint="chat", model="m", body=b"{}", stream=True, include_usage=False, deadline=1.0)
    (req,) = frames.FrameReader().feed(frames.encode(old))  # type: ignore[arg-type]
    assert isinstance(req, Request) and req.region == ""
    (chunk,) = frames.FrameReader().feed(frames.encode(OldChunk(id=1, data=b"x")))  # type: ignore[arg-type]
    assert isinstance(chunk, ResponseChunk) and chunk.tokens == 0  # an old worker's stream is never overcharged


def test_new_messages_decode_on_an_old_peer() -> None:
    old_decoder = msgspec.msgpack.Decoder(OldRequest | OldChunk | OldError)
    new = [Request(id=1, endpoint="chat", model="m", body=b"{}", stream=True, include_usage=False, deadline=1.0,
                   region="eu"),
           ResponseChunk(id=1, data=b"x", tokens=1),
           ResponseError(id=1, status=502, message="broke", usage=Usage(completion_tokens=3), cost_nanoton=9)]
    decoded = [old_decoder.decode(msgspec.msgpack.encode(m)) for m in new]
    assert [type(m) for m in decoded] == [OldRequest, OldChunk, OldError]
