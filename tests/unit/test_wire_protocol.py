"""The link protocol without sockets (wire/protocol.py): hello exchange and versions, multiplexing, cancellation,
pings with injected clocks, and a lost link. Bytes pass from one LinkProtocol to the other by hand."""

from __future__ import annotations

import pytest

from cocoon.attest.types import AttestationError
from cocoon.core.usage import Usage
from cocoon.ledger.vouchers import Voucher
from cocoon.wire import frames
from cocoon.wire.connection import Call
from cocoon.wire.messages import (
    PROTOCOL_VERSION,
    Cancel,
    Hello,
    HelloAck,
    Message,
    ModelInfo,
    ModelsQuery,
    ModelsReply,
    Payout,
    Ping,
    Pong,
    Refuse,
    Request,
    ResponseChunk,
    ResponseEnd,
    ResponseError,
    ResponseHead,
)
from cocoon.wire.protocol import ConnectionLost, LinkLost, LinkProtocol, LinkState, ProtocolError, hello


class Sink(list):
    """A call's answers, in the order the protocol handed them over."""

    def put_nowait(self, item: object) -> None:
        self.append(item)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def encode(*msgs: Message) -> bytes:
    return b"".join(frames.encode(m) for m in msgs)


def decode(data: bytes) -> list[Message]:
    return frames.FrameReader().feed(data)


def request(body: bytes = b"{}", call_id: int = 0) -> Request:
    return Request(call_id=call_id, endpoint="chat", model="m", body=body, stream=True, include_usage=False,
                   deadline=0)


def linked(**kwargs: object) -> tuple[LinkProtocol, LinkProtocol]:
    """A dialer (a client) and a listener (a proxy) that completed the hello exchange."""
    dialer = LinkProtocol.dialer(hello("client", "c1"), **kwargs)  # type: ignore[arg-type]
    listener = LinkProtocol.listener(name="proxy", peer_role="client", allowed_roles={"client", "worker"})
    assert listener.receive_data(dialer.data_to_send()) == []
    assert dialer.receive_data(listener.data_to_send()) == []
    assert dialer.state is listener.state is LinkState.OPEN
    return dialer, listener


# -- hello exchange and versions --------------------------------------------------------------------------------
def test_hello_exchange_opens_both_sides_with_names_and_version() -> None:
    dialer, listener = linked()
    assert (dialer.peer_name, listener.peer_name) == ("proxy", "c1")
    assert dialer.version == listener.version == PROTOCOL_VERSION
    assert listener.peer_hello is not None and listener.peer_hello.role == "client"
    assert dialer.data_to_send() == listener.data_to_send() == b""


def test_an_older_peer_gets_the_highest_version_both_speak() -> None:
    old = Hello(role="worker", name="w-old", min_version=1, max_version=1)
    listener = LinkProtocol.listener(name="proxy", peer_role="worker", allowed_roles={"worker"})
    listener.receive_data(encode(old))
    (ack,) = decode(listener.data_to_send())
    assert isinstance(ack, HelloAck) and ack.version == 1 == listener.version
    dialer = LinkProtocol.dialer(Hello(role="worker", name="w-old", min_version=1, max_version=1))
    dialer.receive_data(encode(ack))
    assert dialer.state is LinkState.OPEN and dialer.version == 1


@pytest.mark.parametrize(("sent", "peer_role", "reason"), [
    (Hello(role="client", name="c", min_version=7, max_version=9), "client",
     f"protocol version mismatch: peer speaks 7..9, we speak 1..{PROTOCOL_VERSION}"),
    (Hello(role="client", name="c", min_version=0, max_version=0), "client", "protocol version mismatch"),
    (hello("worker", "liar"), "client", "hello claims role 'worker' but the attested certificate says 'client'"),
    (hello("proxy", "p"), "proxy", "role 'proxy' may not connect here"),
    (Ping(nonce=1, sent_at=0), "client", "expected hello, got Ping"),
])
def test_the_listener_refuses_a_bad_hello_with_its_reason(sent: Message, peer_role: str, reason: str) -> None:
    listener = LinkProtocol.listener(name="proxy", peer_role=peer_role, allowed_roles={"client", "worker"})
    assert listener.receive_data(encode(sent, request())) == []  # nothing after a refused hello is looked at
    assert listener.closed and reason in listener.close_reason and listener.peer_hello is None
    (refusal,) = decode(listener.data_to_send())
    assert isinstance(refusal, Refuse) and reason in refusal.reason
    dialer = LinkProtocol.dialer(hello("client", "c"))
    dialer.receive_data(encode(refusal))
    assert dialer.closed and dialer.close_reason == f"refused by peer: {refusal.reason}"


def test_the_listener_refuses_what_the_hello_announces_when_admit_says_so() -> None:
    def admit(msg: Hello) -> None:
        if msg.name == "rogue":
            raise AttestationError("worker rogue serves models its engine may not run")
        if msg.name == "pricey":
            raise ProtocolError("price coefficient 5000 is outside 1..2000")

    for name, reason in (("trusted", ""), ("rogue", "worker rogue serves models its engine may not run"),
                         ("pricey", "price coefficient 5000 is outside 1..2000")):
        listener = LinkProtocol.listener(name="proxy", peer_role="worker", allowed_roles={"worker"}, admit=admit)
        listener.receive_data(encode(hello("worker", name)))
        (reply,) = decode(listener.data_to_send())
        assert isinstance(reply, Refuse if reason else HelloAck) and listener.close_reason == reason


@pytest.mark.parametrize(("answer", "reason"), [
    (request(), "expected hello_ack, got Request"),
    (HelloAck(version=PROTOCOL_VERSION + 1, name="p"), f"peer acknowledged protocol version {PROTOCOL_VERSION + 1}"),
    (HelloAck(version=0, name="p"), "peer acknowledged protocol version 0"),
])
def test_the_dialer_refuses_anything_but_an_ack_it_can_speak(answer: Message, reason: str) -> None:
    dialer = LinkProtocol.dialer(hello("client", "c"))
    (sent,) = decode(dialer.data_to_send())
    assert isinstance(sent, Hello) and sent.max_version == PROTOCOL_VERSION
    assert dialer.receive_data(encode(answer)) == []
    assert dialer.closed and reason in dialer.close_reason


def test_a_hello_split_across_reads_and_followed_by_a_request_in_the_same_read() -> None:
    listener = LinkProtocol.listener(name="proxy", peer_role="client", allowed_roles={"client"})
    data = encode(hello("client", "c1"), request(b"first", call_id=1))
    assert listener.receive_data(data[:5]) == [] and listener.state is LinkState.AWAIT_HELLO
    assert listener.receive_data(data[5:]) == [request(b"first", call_id=1)]
    assert listener.state is LinkState.OPEN


@pytest.mark.parametrize("stray", [hello("client", "again"), HelloAck(version=1, name="p")])
def test_a_hello_after_the_handshake_closes_the_link(stray: Message) -> None:
    _, listener = linked()
    assert listener.receive_data(encode(stray, request())) == []
    assert listener.closed and listener.close_reason == f"unexpected {type(stray).__name__} after the handshake"
    assert listener.receive_data(encode(request())) == []  # a closed link takes nothing more


def test_garbage_closes_the_link_as_a_protocol_error() -> None:
    _, listener = linked()
    listener.receive_data((3).to_bytes(4, "big") + b"\xc1\xc1\xc1")
    assert listener.closed and listener.close_reason.startswith("protocol error: undecodable message")


# -- multiplexing and cancellation ----------------------------------------------------------------------------
def test_answers_of_interleaved_calls_reach_their_own_call_in_order_across_any_split() -> None:
    answers = [ResponseHead(call_id=2, status=200), ResponseChunk(call_id=1, data=b"a1"),
               ResponseChunk(call_id=2, data=b"b1"), ResponseHead(call_id=3, status=200),
               ResponseChunk(call_id=1, data=b"a2"), ModelsReply(call_id=3, models=[ModelInfo("m", 1, 1)]),
               ResponseEnd(call_id=2, usage=Usage(completion_tokens=1)),
               ResponseError(call_id=1, status=502, message="broke")]
    inbound = [request(b"r", call_id=1), Cancel(call_id=1), ModelsQuery(call_id=2)]
    stream = encode(answers[0], inbound[0], *answers[1:4], inbound[1], *answers[4:], inbound[2])
    for step in (1, 3, 64, len(stream)):
        proto = LinkProtocol(name="proxy")
        sinks = [Sink(), Sink(), Sink()]
        assert [proto.open_call(s) for s in sinks] == [1, 2, 3]
        got = []
        for pos in range(0, len(stream), step):
            got += proto.receive_data(stream[pos : pos + step])
        assert got == inbound
        for call_id, sink in enumerate(sinks, 1):
            assert sink == [a for a in answers if a.call_id == call_id]


def test_payouts_go_to_the_owner_and_answers_to_unknown_calls_are_dropped() -> None:
    proto = LinkProtocol(name="worker")
    sink = Sink()
    proto.open_call(sink)
    payout = Payout(call_id=4, fee_nanoton=16, voucher=Voucher(tag=3, global_id=-239, contract="0:ab", seqno=1,
                                                                    amount=16))
    got = proto.receive_data(encode(ResponseChunk(call_id=9, data=b"stray"), payout,
                                    ResponseChunk(call_id=1, data=b"x")))
    assert got == [payout] and sink == [ResponseChunk(call_id=1, data=b"x")]


def test_a_cancelled_call_sends_one_cancel_and_its_late_answers_are_dropped() -> None:
    dialer, listener = linked()
    sink = Sink()
    call_id = dialer.open_call(sink)
    frame = dialer.cancel_call(call_id, "client went away")
    assert listener.receive_data(frame) == [Cancel(call_id=call_id, reason="client went away")]
    assert dialer.cancel_call(call_id, "again") == b""  # cancelling twice sends nothing more
    dialer.receive_data(encode(ResponseChunk(call_id=call_id, data=b"late"),
                               ResponseEnd(call_id=call_id, usage=Usage())))
    assert sink == [] and dialer.open_calls == 0


def test_cancel_after_the_end_or_on_a_closed_link_is_harmless() -> None:
    proto = LinkProtocol(name="c")
    ended, open_ = Sink(), Sink()
    first, second = proto.open_call(ended), proto.open_call(open_)
    proto.receive_data(encode(ResponseEnd(call_id=first, usage=Usage())))
    proto.end_call(first)  # the caller took the last answer
    assert proto.cancel_call(first, "too late") == b""
    proto.close("closed locally")
    assert proto.cancel_call(second, "link is closed") == b""


def test_call_ids_are_never_reused_on_a_link() -> None:
    proto = LinkProtocol(name="c")
    ids = []
    for _ in range(5):
        ids.append(proto.open_call(Sink()))
        proto.end_call(ids[-1])
    assert ids == [1, 2, 3, 4, 5]


# -- pings ------------------------------------------------------------------------------------------------------
def test_rtt_and_clock_skew_come_from_the_ping_times() -> None:
    ours, theirs = Clock(1000.0), Clock(1005.1)
    pinger = LinkProtocol(name="proxy", wall=ours)
    peer = LinkProtocol(name="worker", wall=theirs)
    ping = pinger.ping()
    assert peer.receive_data(ping) == []
    (pong,) = decode(peer.data_to_send())
    assert pong == Pong(nonce=0, sent_at=1000.0, peer_time=1005.1)
    ours.now = 1000.2
    pinger.receive_data(encode(pong))
    assert pinger.rtt_ms == pytest.approx(200.0)
    assert pinger.clock_skew_s == pytest.approx(5.0)  # the peer's clock is 5 s ahead of the middle of the trip
    assert [m.nonce for m in decode(pinger.ping() + pinger.ping())] == [1, 2]  # type: ignore[union-attr]


def test_a_peer_silent_longer_than_dead_after_is_dead_and_any_byte_keeps_it_alive() -> None:
    clock = Clock(0.0)
    proto = LinkProtocol(name="proxy", dead_after=35.0, clock=clock)
    clock.now = 30.0
    assert proto.check_alive()
    proto.receive_data(encode(Ping(nonce=1, sent_at=0)))  # anything from the peer counts
    clock.now = 65.0
    assert proto.check_alive()
    clock.now = 65.5
    assert not proto.check_alive()
    assert proto.closed and proto.close_reason == "peer silent for more than 35s"


def test_a_refusal_ends_the_link_and_revoking_sends_one() -> None:
    dialer, listener = linked()
    frame = listener.revoke("peer attestation no longer accepted: image removed")
    assert listener.closed
    dialer.receive_data(frame + encode(request()))
    assert dialer.closed and dialer.close_reason == "refused by peer: peer attestation no longer accepted: image " \
                                                    "removed"


# -- a lost link ------------------------------------------------------------------------------------------------
def test_a_lost_link_fails_every_open_call_and_takes_no_new_one() -> None:
    proto = LinkProtocol(name="c", peer_name="proxy-1")
    sinks = [Sink(), Sink()]
    for sink in sinks:
        proto.open_call(sink)
    proto.close("peer closed the connection")
    proto.connection_lost()
    assert sinks == [[None], [None]] and proto.open_calls == 0
    assert proto.close_reason == "peer closed the connection"  # the first reason is kept
    with pytest.raises(ConnectionLost, match="peer closed the connection"):
        proto.open_call(Sink())


async def test_a_call_raises_link_lost_after_the_answers_that_arrived_first() -> None:
    proto = LinkProtocol(name="c", peer_name="proxy-1")
    sent: list[bytes] = []
    call = Call(proto, sent.append)
    proto.receive_data(encode(ResponseHead(call_id=call.call_id, status=200)))
    proto.connection_lost("connection error: reset")
    assert await call.next(1) == ResponseHead(call_id=call.call_id, status=200)
    for _ in range(2):  # and every later look says so too
        with pytest.raises(LinkLost, match="link to proxy-1 lost: connection error: reset"):
            await call.next(1)
    assert call.done
    call.cancel()
    assert sent == []  # nothing to cancel on a lost link


async def test_a_call_is_ready_exactly_when_an_answer_or_the_loss_is_already_queued() -> None:
    """The client's SSE writer sends what is ready in one write; ready() must never promise an answer not there."""
    proto = LinkProtocol(name="c", peer_name="proxy-1")
    call = Call(proto, [].append)
    assert not call.ready()
    with pytest.raises(TimeoutError):
        await call.next(0.01)  # nothing queued: next() still waits, and its timeout still holds
    proto.receive_data(encode(ResponseChunk(call_id=call.call_id, data=b"a"))
                       + encode(ResponseChunk(call_id=call.call_id, data=b"b")))
    assert call.ready()
    assert await call.next(1) == ResponseChunk(call_id=call.call_id, data=b"a")
    assert call.ready()
    assert await call.next(1) == ResponseChunk(call_id=call.call_id, data=b"b")
    assert not call.ready()
    proto.connection_lost("connection error: reset")
    assert call.ready()
    with pytest.raises(LinkLost):
        await call.next(1)


async def test_a_call_cancelled_sends_its_cancel_through_the_link_once() -> None:
    proto = LinkProtocol(name="c")
    sent: list[bytes] = []
    call = Call(proto, sent.append)
    call.cancel("no longer wanted")
    call.cancel("twice")
    assert decode(b"".join(sent)) == [Cancel(call_id=call.call_id, reason="no longer wanted")]
    proto.receive_data(encode(ResponseChunk(call_id=call.call_id, data=b"late")))
    assert call.queue.empty()
