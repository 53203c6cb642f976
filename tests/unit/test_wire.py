"""Frames and the multiplexed connection, over a real RA-TLS socket pair."""

from __future__ import annotations

import asyncio

import pytest

from cocoon.attest.fake import FakeBackend
from cocoon.attest.none import NoneBackend
from cocoon.attest.policy import DEV_POLICY
from cocoon.core.usage import Usage
from cocoon.ratls import tls
from cocoon.ratls.cert import CertVerifier, make_identity
from cocoon.wire import frames
from cocoon.wire.connection import Connection, LinkLost, ProtocolError, accept_hello, dial_hello, hello
from cocoon.wire.messages import (
    Cancel,
    Hello,
    ModelInfo,
    ModelsQuery,
    ModelsReply,
    Request,
    ResponseChunk,
    ResponseEnd,
)


def test_frames_round_trip_across_arbitrary_splits() -> None:
    msgs = [ResponseChunk(call_id=i, data=bytes([i]) * i * 100) for i in range(1, 30)]
    stream = b"".join(frames.encode(m) for m in msgs)
    for step in (1, 7, 4096, len(stream)):
        reader = frames.FrameReader()
        out = []
        for pos in range(0, len(stream), step):
            out += reader.feed(stream[pos : pos + step])
        assert out == msgs


def test_oversized_and_garbage_frames_are_refused() -> None:
    with pytest.raises(frames.FrameError, match="limit"):
        frames.FrameReader().feed((frames.MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(frames.FrameError, match="undecodable"):
        frames.FrameReader().feed((3).to_bytes(4, "big") + b"\xc1\xc1\xc1")


async def pair(client_hello: Hello, on_inbound) -> tuple[Connection, asyncio.Future, asyncio.Server]:
    server_identity = make_identity("proxy", FakeBackend("p"))
    accepted: asyncio.Future = asyncio.get_running_loop().create_future()

    async def handler(stream: tls.TlsStream) -> None:
        try:
            conn, msg = await accept_hello(stream, name="proxy-test", allowed_roles={"client", "worker"})
        except ProtocolError:
            accepted.set_result(None)  # the dialer sees the refusal itself
            return
        accepted.set_result((conn, msg))
        await conn.run(on_inbound)

    server = await tls.serve(handler, "127.0.0.1", 0, server_identity, CertVerifier(DEV_POLICY, {"client", "worker"}))
    port = server.sockets[0].getsockname()[1]
    stream = await tls.connect("127.0.0.1", port, make_identity("client", NoneBackend()),
                               CertVerifier(DEV_POLICY, {"proxy"}))
    conn = await dial_hello(stream, client_hello)
    return conn, accepted, server


async def test_streamed_answers_models_and_cancel_are_multiplexed() -> None:
    cancelled: list[int] = []

    async def answer(conn: Connection, req: Request) -> None:
        for i in range(3):
            await conn.send(ResponseChunk(call_id=req.call_id, data=b"%s-%d" % (req.body, i)))
        await conn.send(ResponseEnd(call_id=req.call_id, usage=Usage(prompt_tokens=1, completion_tokens=3)))

    def on_inbound(conn: Connection, msg):
        if isinstance(msg, Request):
            return answer(conn, msg)
        if isinstance(msg, Cancel):
            cancelled.append(msg.call_id)
        elif isinstance(msg, ModelsQuery):
            conn.send_nowait(ModelsReply(call_id=msg.call_id, models=[ModelInfo(id="m", workers=1, free_slots=2)]))
        return None

    conn, _accepted, server = await pair(hello("client", "c1"), on_inbound)
    runner = asyncio.create_task(conn.run(lambda c, m: None))
    try:
        sent = [Request(endpoint="chat", model="m", body=b"r%d" % i, stream=True, include_usage=False, deadline=0)
                for i in range(5)]
        calls = [await conn.request(req) for req in sent]
        assert [c.call_id for c in calls] == [1, 2, 3, 4, 5]
        assert all(req.call_id == 0 for req in sent)  # the link numbers what it sends, not what it was handed
        for i, call in enumerate(calls):
            got = [await call.next(5) for _ in range(4)]
            assert [m.data for m in got[:3]] == [b"r%d-%d" % (i, k) for k in range(3)]
            assert got[3].usage.completion_tokens == 3 and call.done
        reply = await conn.query_models()
        assert reply.models == [ModelInfo(id="m", workers=1, free_slots=2)]
        extra = conn.open_call()
        extra.cancel()
        await asyncio.sleep(0.1)
        assert cancelled == [extra.call_id]
    finally:
        await conn.close()
        runner.cancel()
        server.close()


async def test_lost_link_fails_open_calls_with_a_clear_error() -> None:
    conn, accepted, server = await pair(hello("client", "c1"), lambda c, m: None)
    runner = asyncio.create_task(conn.run(lambda c, m: None))
    call = await conn.request(Request(endpoint="chat", model="m", body=b"{}", stream=False,
                                      include_usage=False, deadline=0))
    server_conn, _ = await accepted
    await server_conn.close("test kills the link")
    with pytest.raises(LinkLost, match=r"link to .* lost: peer closed the connection"):
        await call.next(5)
    assert call.done
    with pytest.raises(LinkLost):  # and so does every later look
        await call.next(5)
    await runner
    server.close()


async def test_version_mismatch_is_refused_with_a_reason() -> None:
    bad = Hello(role="client", name="c-old", min_version=7, max_version=9)
    with pytest.raises(ProtocolError, match="protocol version mismatch"):
        await pair(bad, lambda c, m: None)


async def test_hello_role_must_match_the_certificate() -> None:
    with pytest.raises(ProtocolError, match="attested certificate says 'client'"):
        await pair(hello("worker", "liar"), lambda c, m: None)
