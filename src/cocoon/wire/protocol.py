"""The state of one link without any I/O, the way h11 drives HTTP/1.1 without a socket.

`LinkProtocol` is fed the bytes that arrived (`receive_data`) and clock readings (injected), and decides:
the hello exchange and the protocol version, which call an answer belongs to (answers to calls that were
cancelled or ended are dropped), what the owner of the link must handle (requests, cancels, models queries,
payouts), the replies the protocol makes by itself (pong, hello ack, refusal), round trip and clock skew, when a
silent peer counts as dead, and that a lost link fails every open call. What it wants sent waits in
`data_to_send()`; frames it decides on are returned as bytes. `connection.Connection` is the asyncio driver
that moves those bytes over a TlsStream.

Each side numbers the calls it originates (`call_id`); answers (head/chunk/end/error/models_reply) refer to the
receiver's own call ids, requests and cancels to the peer's.

Answers are the hot path (every relayed chunk): each is classified by its exact type with one set lookup
(isinstance on a msgspec struct costs about 15 times as much, and a union several times that) and handed
straight to its call's sink.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from enum import Enum
from typing import Protocol, get_args

from cocoon.attest.types import AttestationError
from cocoon.core.errors import CocoonError
from cocoon.wire import frames
from cocoon.wire.messages import (
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    Cancel,
    Hello,
    HelloAck,
    Inbound,
    Message,
    Ping,
    Pong,
    Refuse,
    ToCall,
)


class ProtocolError(ConnectionError, CocoonError):
    """The peer broke the protocol or refused us; the message says how."""


class ConnectionLost(ConnectionError, CocoonError):
    """The link is closed: nothing more can be sent on it."""


class LinkLost(CocoonError):
    """The link broke while a call was open: no answer will come. Not a ConnectionError, so that a caller relaying
    between two links never mistakes the peer's link for its own."""


class Sink(Protocol):
    """Where a call's answers go, in order; `None` once the link is lost (an asyncio.Queue in the driver)."""

    def put_nowait(self, item: ToCall | None, /) -> None: ...


class LinkState(Enum):
    AWAIT_HELLO = "await_hello"  # listener: the peer's hello comes first
    AWAIT_ACK = "await_ack"  # dialer: our hello is sent, its ack comes first
    OPEN = "open"
    CLOSED = "closed"


_ANSWERS = frozenset(get_args(ToCall))
_INBOUND = frozenset(get_args(Inbound))


class LinkProtocol:
    """One link's protocol state. Built open (`LinkProtocol(name=...)`), or at the start of the hello exchange
    with `dialer` or `listener`."""

    def __init__(self, *, name: str, peer_name: str = "", version: int = PROTOCOL_VERSION,
                 dead_after: float = 35.0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.name = name
        self.peer_name = peer_name
        self.version = version
        self.state = LinkState.OPEN
        self.closed = False  # state is CLOSED; a plain attribute, read before every frame sent
        self.close_reason = ""
        self.dead_after = dead_after  # seconds without a byte from the peer after which it counts as dead
        self.rtt_ms: float | None = None
        self.clock_skew_s: float | None = None  # the peer's clock minus ours, as the last pong suggests
        self.peer_hello: Hello | None = None  # what the peer said in its hello (listener)
        self._clock = clock  # monotonic: silence
        self._wall = wall  # unix time: what pings carry, to estimate the peer's clock skew
        self.last_seen = clock()
        self._calls: dict[int, Sink] = {}
        self._ids = itertools.count(1)
        self._pings = itertools.count()
        self._reader = frames.FrameReader()
        self._outbox = bytearray()
        # listener only: the role the peer's certificate attests, and the roles this side accepts
        self._peer_role = ""
        self._allowed_roles: frozenset[str] = frozenset()
        self._admit: Callable[[Hello], None] | None = None

    @classmethod
    def dialer(cls, hello: Hello, **kwargs: object) -> LinkProtocol:
        """The side that dialed: `hello` is queued to be sent; the link opens when the peer acknowledges it."""
        proto = cls(name=hello.name, **kwargs)  # type: ignore[arg-type]
        proto.state = LinkState.AWAIT_ACK
        proto._outbox += frames.encode(hello)
        return proto

    @classmethod
    def listener(cls, *, name: str, peer_role: str, allowed_roles: set[str] | frozenset[str],
                 admit: Callable[[Hello], None] | None = None, **kwargs: object) -> LinkProtocol:
        """The side that accepted: the peer's hello must match `peer_role` (its attested certificate's), be one
        of `allowed_roles`, share a protocol version and pass `admit` (the listener's own rules, which raise
        AttestationError or ProtocolError to refuse what the hello announces); otherwise it is refused and the
        link closes."""
        proto = cls(name=name, **kwargs)  # type: ignore[arg-type]
        proto.state = LinkState.AWAIT_HELLO
        proto._peer_role = peer_role
        proto._allowed_roles = frozenset(allowed_roles)
        proto._admit = admit
        return proto

    # -- state ---------------------------------------------------------------------------------------------
    @property
    def open_calls(self) -> int:
        return len(self._calls)

    def close(self, reason: str) -> None:
        """The link ends; the first reason given is the one kept."""
        if not self.closed:
            self.state = LinkState.CLOSED
            self.closed = True
            self.close_reason = reason

    def connection_lost(self, reason: str = "connection closed") -> None:
        """The bytes stopped: close, and tell every open call (its sink gets None: the driver raises LinkLost)."""
        self.close(reason)
        calls, self._calls = self._calls, {}
        for sink in calls.values():
            sink.put_nowait(None)

    def lost_message(self) -> str:
        return f"link to {self.peer_name} lost: {self.close_reason}"

    def data_to_send(self) -> bytes:
        """What the protocol queued by itself (hello, ack, refusal, pongs); empties the queue."""
        if not self._outbox:
            return b""
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    # -- calls we originate --------------------------------------------------------------------------------
    def open_call(self, sink: Sink) -> int:
        """A new call's id; its answers will go to `sink`. ConnectionLost once the link is closed."""
        if self.closed:
            raise ConnectionLost(self.close_reason or "connection closed")
        call_id = next(self._ids)
        self._calls[call_id] = sink
        return call_id

    def end_call(self, call_id: int) -> None:
        """The call's last answer was taken: later frames for it are dropped."""
        self._calls.pop(call_id, None)

    def cancel_call(self, call_id: int, reason: str) -> bytes:
        """Stop a call: the Cancel frame to send, or b"" when there is nothing to cancel (the call ended, was
        cancelled already, or the link is closed). Answers that still arrive for it are dropped."""
        if self._calls.pop(call_id, None) is None or self.closed:
            return b""
        return frames.encode(Cancel(call_id=call_id, reason=reason))

    # -- pings ---------------------------------------------------------------------------------------------
    def check_alive(self) -> bool:
        """False, and the link closed, when nothing came from the peer for longer than `dead_after`."""
        if self._clock() - self.last_seen > self.dead_after:
            self.close(f"peer silent for more than {self.dead_after:.0f}s")
            return False
        return not self.closed

    def ping(self) -> bytes:
        return frames.encode(Ping(nonce=next(self._pings), sent_at=self._wall()))

    def revoke(self, reason: str) -> bytes:
        """We refuse the peer from now on (its attestation no longer holds): the Refuse frame to send; closed."""
        self.close(reason)
        return frames.encode(Refuse(reason=reason))

    # -- receiving -----------------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Inbound]:
        """Take bytes from the peer. Answers go to their calls' sinks; the messages the link's owner must handle
        are returned in order. A protocol violation closes the link (see `close_reason`)."""
        if self.closed:
            return []
        self.last_seen = self._clock()
        try:
            msgs = self._reader.feed(data)
        except frames.FrameError as exc:
            # the peer's bytes are not frames: nothing after them can be read; it is told why
            reason = f"protocol error: {exc}"
            self._outbox += frames.encode(Refuse(reason=reason))
            self.close(reason)
            return []
        inbound: list[Inbound] = []
        if self.state is not LinkState.OPEN:
            msgs = self._hello_exchange(msgs)
        calls = self._calls
        for msg in msgs:
            kind = type(msg)
            if kind in _ANSWERS:
                sink = calls.get(msg.call_id)  # type: ignore[union-attr]
                if sink is not None:  # answers to cancelled or ended calls are dropped
                    sink.put_nowait(msg)  # type: ignore[arg-type]
            elif kind in _INBOUND:
                inbound.append(msg)  # type: ignore[arg-type]
            elif not self._control(msg):
                break
        return inbound

    def _control(self, msg: Message) -> bool:
        """Ping, pong, refusal, a stray hello; False when the link closed."""
        if isinstance(msg, Ping):
            self._outbox += frames.encode(Pong(nonce=msg.nonce, sent_at=msg.sent_at, peer_time=self._wall()))
        elif isinstance(msg, Pong):
            now = self._wall()
            self.rtt_ms = (now - msg.sent_at) * 1000
            self.clock_skew_s = msg.peer_time - (msg.sent_at + now) / 2
        elif isinstance(msg, Refuse):
            self.close(f"refused by peer: {msg.reason}")
        else:
            self.close(f"unexpected {type(msg).__name__} after the handshake")
        return not self.closed

    def _hello_exchange(self, msgs: list[Message]) -> list[Message]:
        """Judge the first message against the hello exchange; what follows it, once the link is open."""
        if not msgs:
            return msgs
        first, rest = msgs[0], msgs[1:]
        if self.state is LinkState.AWAIT_HELLO:
            reason = self._judge_hello(first)
            if reason is not None:
                self._outbox += frames.encode(Refuse(reason=reason))
                self.close(reason)
                return []
            assert isinstance(first, Hello)
            self.peer_hello = first
            self.version = min(PROTOCOL_VERSION, first.max_version)
            self.peer_name = first.name
            self._outbox += frames.encode(HelloAck(version=self.version, name=self.name))
        else:
            if isinstance(first, Refuse):
                self.close(f"refused by peer: {first.reason}")
                return []
            if not isinstance(first, HelloAck):
                self.close(f"expected hello_ack, got {type(first).__name__}")
                return []
            if not MIN_PROTOCOL_VERSION <= first.version <= PROTOCOL_VERSION:
                self.close(f"peer acknowledged protocol version {first.version}, outside the "
                           f"{MIN_PROTOCOL_VERSION}..{PROTOCOL_VERSION} we offered")
                return []
            self.version = first.version
            self.peer_name = first.name
        self.state = LinkState.OPEN
        return rest

    def _judge_hello(self, msg: Message) -> str | None:
        """Why the peer's first message is refused, or None for a hello we accept."""
        if not isinstance(msg, Hello):
            return f"expected hello, got {type(msg).__name__}"
        if msg.max_version < MIN_PROTOCOL_VERSION or msg.min_version > PROTOCOL_VERSION:
            return (f"protocol version mismatch: peer speaks {msg.min_version}..{msg.max_version}, "
                    f"we speak {MIN_PROTOCOL_VERSION}..{PROTOCOL_VERSION}")
        if msg.role != self._peer_role:
            return f"hello claims role {msg.role!r} but the attested certificate says {self._peer_role!r}"
        if msg.role not in self._allowed_roles:
            return f"role {msg.role!r} may not connect here"
        if self._admit is not None:
            try:
                self._admit(msg)
            except (AttestationError, ProtocolError) as exc:
                return str(exc)
        return None


def hello(role: str, name: str, **params: object) -> Hello:
    return Hello(role=role, name=name, min_version=MIN_PROTOCOL_VERSION, max_version=PROTOCOL_VERSION, **params)
