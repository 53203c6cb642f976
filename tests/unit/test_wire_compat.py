"""Fields added for routing keep the wire compatible: an older peer's messages decode, and ours decode there."""

from __future__ import annotations

import msgspec

from cocoon.core.usage import Usage
from cocoon.wire import frames
from cocoon.wire.messages import Request, ResponseChunk, ResponseEnd, ResponseError


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


class OldEnd(msgspec.Struct, tag="end", tag_field="t"):
    """Before the proxy named the worker's coefficient."""

    id: int
    usage: Usage
    worker_ms: float = 0.0
    proxy_ms: float = 0.0
    cost_nanoton: int = 0


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
    assert isinstance(req, Request) and req.region == "" and not req.deterministic
    (chunk,) = frames.FrameReader().feed(frames.encode(OldChunk(id=1, data=b"x")))  # type: ignore[arg-type]
    assert isinstance(chunk, ResponseChunk) and chunk.tokens == 0  # an old worker's stream is never overcharged
    (end,) = frames.FrameReader().feed(frames.encode(OldEnd(id=1, usage=Usage(), cost_nanoton=5)))  # type: ignore[arg-type]
    assert isinstance(end, ResponseEnd) and end.coefficient == 0  # not said: the client prices at its own cap


def test_new_messages_decode_on_an_old_peer() -> None:
    old_decoder = msgspec.msgpack.Decoder(OldRequest | OldChunk | OldEnd | OldError)
    new = [Request(call_id=1, endpoint="chat", model="m", body=b"{}", stream=True, include_usage=False,
                   deadline=1.0, region="eu", request_id="r-1", max_tokens=5, sealed=True, deterministic=True),
           ResponseChunk(call_id=1, data=b"x", tokens=1),
           ResponseEnd(call_id=1, usage=Usage(completion_tokens=3), cost_nanoton=9, coefficient=1500),
           ResponseError(call_id=1, status=502, message="broke", usage=Usage(completion_tokens=3), cost_nanoton=9,
                         param="n", coefficient=1500)]
    decoded = [old_decoder.decode(msgspec.msgpack.encode(m)) for m in new]
    assert [type(m) for m in decoded] == [OldRequest, OldChunk, OldEnd, OldError]
    # call_id and request_id keep the names earlier peers read
    assert (decoded[0].id, decoded[0].uid, decoded[1].id, decoded[3].id) == (1, "r-1", 1, 1)


def test_zero_max_tokens_from_an_earlier_peer_means_unset() -> None:
    class Capped(OldRequest, tag="req", tag_field="t"):
        max_tokens: int = 0

    for sent, read in ((0, None), (9, 9)):
        (req,) = frames.FrameReader().feed(frames.encode(Capped(  # type: ignore[arg-type]
            id=1, endpoint="chat", model="m", body=b"{}", stream=False, include_usage=False, deadline=1.0,
            uid="r-2", max_tokens=sent)))
        assert isinstance(req, Request) and (req.call_id, req.request_id, req.max_tokens) == (1, "r-2", read)
    # and an unset cap is left out, so that such a peer reads its own default
    unset = Request(call_id=1, endpoint="chat", model="m", body=b"{}", stream=False, include_usage=False, deadline=1)
    assert "max_tokens" not in msgspec.msgpack.decode(msgspec.msgpack.encode(unset))
