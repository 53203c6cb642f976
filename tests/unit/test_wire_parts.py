"""A request body in parts (protocol 3): the sender's credit, the receiver's bounded queue, a call keeping the
PartAcks apart from its answers, the frames on the wire and what an older peer reads of them."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from cocoon.core.usage import Usage
from cocoon.wire import frames
from cocoon.wire.connection import Call
from cocoon.wire.messages import (
    PROTOCOL_VERSION,
    ChunkAck,
    MediaParams,
    PartAck,
    Request,
    RequestPart,
    ResponseChunk,
    WorkerParams,
)
from cocoon.wire.parts import WINDOW, Credit, PartQueue
from cocoon.wire.protocol import LinkProtocol


async def test_credit_lets_a_window_run_ahead_and_no_more() -> None:
    credit = Credit(window=2)
    for _ in range(2):
        await credit.wait()
        credit.spend()
    blocked = asyncio.create_task(credit.wait())
    await asyncio.sleep(0)
    assert not blocked.done()
    credit.took(1)
    await asyncio.wait_for(blocked, 1)
    credit.took(0)  # an older count changes nothing
    assert credit.taken == 1
    credit.took(99)  # never more than was sent
    assert credit.taken == 2


async def test_a_failed_credit_wakes_and_refuses_the_sender() -> None:
    credit = Credit(window=1)
    credit.spend()
    waiting = asyncio.create_task(credit.wait())
    await asyncio.sleep(0)
    credit.fail()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(waiting, 1)


async def test_part_queue_keeps_order_refuses_beyond_its_window_and_after_the_last() -> None:
    queue = PartQueue(window=2)
    assert queue.feed(RequestPart(call_id=1, data=b"a"))
    assert queue.feed(RequestPart(call_id=1, data=b"b", last=True))
    assert not queue.feed(RequestPart(call_id=1, data=b"c"))  # beyond the window
    assert (await queue.next()).data == b"a"
    assert not queue.feed(RequestPart(call_id=1, data=b"d"))  # after the last part
    assert (await queue.next()).last and queue.taken == 2


async def test_an_aborted_queue_answers_none_forever() -> None:
    queue = PartQueue()
    waiting = asyncio.create_task(queue.next())
    await asyncio.sleep(0)
    queue.abort()
    assert await asyncio.wait_for(waiting, 1) is None
    assert await queue.next() is None


async def test_a_call_keeps_part_acks_apart_from_its_answers() -> None:
    proto = LinkProtocol(name="client")
    written: list[bytes] = []
    call = Call(proto, written.append)
    call.credit = Credit()
    call.credit.sent = WINDOW
    proto.receive_data(frames.encode(PartAck(call_id=call.call_id, taken=3))
                       + frames.encode(ResponseChunk(call_id=call.call_id, data=b"out")))
    assert call.credit.taken == 3
    assert await call.next(1) == ResponseChunk(call_id=call.call_id, data=b"out")
    assert not call.ready()  # the ack never reached the answers
    call.ack_chunks(1)
    assert frames.FrameReader().feed(written[0]) == [ChunkAck(call_id=call.call_id, taken=1)]


def test_the_callee_gets_parts_and_chunk_acks_as_inbound() -> None:
    proto = LinkProtocol(name="worker")
    part, ack = RequestPart(call_id=5, data=b"x" * 10, last=True), ChunkAck(call_id=5, taken=2)
    assert proto.receive_data(frames.encode(part) + frames.encode(ack)) == [part, ack]
    assert PROTOCOL_VERSION >= 3


class OldRequest(msgspec.Struct, tag="req", tag_field="t"):
    id: int
    endpoint: str
    model: str
    body: bytes
    stream: bool
    include_usage: bool
    deadline: float


class OldWorkerParams(msgspec.Struct):
    models: list[str]
    coefficient: int
    max_active_requests: int


def test_older_peers_read_what_they_know() -> None:
    old = msgspec.msgpack.encode(OldRequest(id=1, endpoint="chat", model="m", body=b"{}", stream=False,
                                            include_usage=False, deadline=0.0))
    req = frames.FrameReader().feed(len(old).to_bytes(4, "big") + old)[0]
    assert isinstance(req, Request) and (req.parts, req.max_media_ms) == (False, 0)
    # a chat request says nothing of parts: an older proxy sees the same bytes as before
    assert b"parts" not in frames.encode(req) and b"max_media_ms" not in frames.encode(req)
    media = MediaParams(formats=["ogg"], codecs=["libopus"], max_input_bytes=1, max_seconds=1.0, max_width=2,
                        max_height=2)
    params = WorkerParams(models=[], coefficient=1000, max_active_requests=1, media=media)
    assert params.served == ["media"]
    seen = msgspec.msgpack.decode(msgspec.msgpack.encode(params), type=OldWorkerParams)
    assert seen.models == []


def test_usage_with_media_keeps_token_views_unchanged() -> None:
    usage = Usage(media_ms=2500)
    assert usage.total_tokens == 0 and list(usage.by_kind()) == [("prompt", 0), ("cached", 0), ("completion", 0),
                                                                 ("reasoning", 0)]
    assert msgspec.msgpack.encode(Usage()) == msgspec.msgpack.encode({})


async def test_a_later_attempt_restarts_the_count_and_stops_a_sender_of_an_earlier_one() -> None:
    credit = Credit(window=1)
    assert await credit.wait(0)
    credit.spend()
    blocked = asyncio.create_task(credit.wait(0))
    moved = asyncio.create_task(credit.moved_on(0))
    await asyncio.sleep(0)
    assert not blocked.done() and not moved.done()
    credit.took(0, attempt=1)  # the proxy asks for the body again
    assert await asyncio.wait_for(blocked, 1) is False  # the sender of attempt 0 stops
    assert await asyncio.wait_for(moved, 1) == 1
    assert (credit.sent, credit.taken) == (0, 0)
    assert await credit.wait(1)
    credit.spend()
    credit.took(1, attempt=0)  # a late count of the earlier attempt changes nothing
    assert credit.taken == 0
    credit.took(1, attempt=1)
    assert credit.taken == 1


async def test_the_proxy_drops_parts_of_an_earlier_sending_and_refuses_a_later_one() -> None:
    from cocoon.proxy.uploads import Upload

    upload = Upload()
    assert upload.feed(RequestPart(call_id=1, data=b"a"))
    assert (await upload.parts.next()).data == b"a"
    assert upload.moved
    upload.restart()  # no client known yet: nothing to tell
    assert (upload.attempt, upload.moved) == (1, False)
    assert upload.feed(RequestPart(call_id=1, data=b"b", attempt=0))  # on its way before the restart: dropped
    assert not upload.feed(RequestPart(call_id=1, data=b"c", attempt=2))  # a sending nobody asked for
    assert upload.feed(RequestPart(call_id=1, data=b"a", attempt=1, last=True))
    part = await upload.parts.next()
    assert (part.data, part.last, part.attempt) == (b"a", True, 1)


def test_a_media_jobs_envelope_binds_its_declared_input_and_other_envelopes_are_as_before() -> None:
    chat = Request(endpoint="chat", model="m", body=b"{}", stream=True, include_usage=False, deadline=1.0,
                   request_id="r")
    assert chat.envelope() == msgspec.msgpack.encode([1, "r", "chat", "m", True, False, 1, [], "", 1.0])
    job = Request(endpoint="media", model="media", body=b"{}", stream=True, include_usage=False, deadline=1.0,
                  request_id="r", parts=True, max_media_ms=1000)
    assert job.envelope() != msgspec.structs.replace(job, max_media_ms=2000).envelope()
    assert job.envelope() == msgspec.structs.replace(job, resend_parts=True).envelope()  # the proxy's to use
