"""A multiplexed, attested link: framing, call ids, streamed answers, cancellation, ping/pong.

Each side numbers the calls it originates (`call_id`); answers (head/chunk/end/error/models_reply) refer to the
receiver's own call ids, requests and cancels to the peer's. A call whose link breaks raises `LinkLost`. At
every ping the peer's certificate is verified again against the current policy and root registry: a peer whose
image was removed, or whose certificate expired, loses the link within one ping interval, and is sent the
reason first.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec

from cocoon.attest.types import AttestationError, PeerIdentity
from cocoon.core.errors import CocoonError
from cocoon.ratls.tls import TlsStream
from cocoon.wire import frames
from cocoon.wire.messages import (
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    Answer,
    Cancel,
    Hello,
    HelloAck,
    Inbound,
    Message,
    ModelsQuery,
    Ping,
    Pong,
    Refuse,
    Request,
    ResponseEnd,
    ResponseError,
)

log = logging.getLogger(__name__)

RECHECK_FAILED = "peer attestation could not be re-verified"

InboundHandler = Callable[["Connection", Inbound], Awaitable[None] | None]


class ProtocolError(ConnectionError, CocoonError):
    """The peer broke the protocol or refused us; the message says how."""


class ConnectionLost(ConnectionError, CocoonError):
    pass


class LinkLost(CocoonError):
    """The link broke while a call was open: no answer will come. Not a ConnectionError, so that a caller relaying
    between two links never mistakes the peer's link for its own."""


class Call:
    """An outgoing request: its answers arrive on `queue` in order, ending with an end or error; `next()` raises
    LinkLost instead if the link breaks first."""

    __slots__ = ("_conn", "call_id", "done", "queue")

    def __init__(self, conn: Connection, call_id: int) -> None:
        self._conn = conn
        self.call_id = call_id
        self.queue: asyncio.Queue[Answer | None] = asyncio.Queue()  # None: the link broke
        self.done = False

    async def next(self, timeout: float | None = None) -> Answer:
        msg = await asyncio.wait_for(self.queue.get(), timeout) if timeout else await self.queue.get()
        if msg is None:
            self.done = True
            self.queue.put_nowait(None)  # every later next() says so too
            raise LinkLost(f"link to {self._conn.peer_name} lost: {self._conn.close_reason}")
        if isinstance(msg, ResponseEnd | ResponseError):
            self.done = True
            self._conn._calls.pop(self.call_id, None)
        return msg

    def cancel(self, reason: str = "cancelled by the requester") -> None:
        """Stop the remote work; harmless after the answer ended or the link broke."""
        if self.done:
            return
        self.done = True
        if self._conn._calls.pop(self.call_id, None) is not None:
            self._conn.send_nowait(Cancel(call_id=self.call_id, reason=reason))


class Connection:
    def __init__(self, stream: TlsStream, *, name: str, peer_name: str = "", version: int = PROTOCOL_VERSION):
        self.stream = stream
        self.peer: PeerIdentity = stream.peer
        self.name = name
        self.peer_name = peer_name
        self.version = version
        self.rtt_ms: float | None = None
        self.clock_skew_s: float | None = None
        self._calls: dict[int, Call] = {}
        self._ids = itertools.count(1)
        self._reader = frames.FrameReader()
        self._pending: list[Message] = []
        self._closed = asyncio.Event()
        self._close_reason = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_seen = time.monotonic()
        # What the application checks of the peer beyond its certificate (a worker's engine against the models it
        # serves), again at every re-verification; AttestationError ends the link.
        self.admission: Callable[[PeerIdentity], None] | None = None

    # -- sending -------------------------------------------------------------------------------------------
    def send_nowait(self, msg: Message) -> None:
        if self._closed.is_set():
            return
        try:
            self.stream.write(frames.encode(msg))
        except (ConnectionError, OSError) as exc:
            self._mark_closed(f"write failed: {exc}")

    async def send(self, msg: Message) -> None:
        if self._closed.is_set():
            raise ConnectionLost(self._close_reason or "connection closed")
        self.send_nowait(msg)
        try:
            await self.stream.drain()
        except (ConnectionError, OSError) as exc:
            self._mark_closed(f"write failed: {exc}")
            raise ConnectionLost(self._close_reason) from None

    def open_call(self) -> Call:
        if self._closed.is_set():
            raise ConnectionLost(self._close_reason or "connection closed")
        call = Call(self, next(self._ids))
        self._calls[call.call_id] = call
        return call

    async def request(self, req: Request) -> Call:
        """Send `req` as a new call on this link; `req` itself is left as it was (its call_id is ignored)."""
        call = self.open_call()
        await self.send(msgspec.structs.replace(req, call_id=call.call_id))
        return call

    async def query_models(self, timeout: float = 5.0) -> Answer:
        call = self.open_call()
        await self.send(ModelsQuery(call_id=call.call_id))
        try:
            return await call.next(timeout)
        finally:
            self._calls.pop(call.call_id, None)

    # -- receiving -----------------------------------------------------------------------------------------
    async def read_message(self, timeout: float) -> Message:
        """Read one message outside the dispatch loop (used only for the hello exchange)."""

        async def next_message() -> Message:
            while not self._pending:
                data = await self.stream.read()
                if not data:
                    raise ConnectionLost("peer closed the connection")
                self._pending.extend(self._reader.feed(data))
            return self._pending.pop(0)

        return await asyncio.wait_for(next_message(), timeout)

    async def run(self, on_inbound: InboundHandler, *, ping_interval: float = 10.0, dead_after: float = 35.0) -> str:
        """Dispatch messages until the link ends; returns why it ended. Open calls raise LinkLost."""
        pinger = asyncio.create_task(self._ping_loop(ping_interval, dead_after))
        try:
            for msg in self._pending:
                self._dispatch(msg, on_inbound)
            self._pending.clear()
            while not self._closed.is_set():
                data = await self.stream.read()
                if not data:
                    self._mark_closed("peer closed the connection")
                    break
                self._last_seen = time.monotonic()
                for msg in self._reader.feed(data):
                    self._dispatch(msg, on_inbound)
        except frames.FrameError as exc:
            self._mark_closed(f"protocol error: {exc}")
        except (ConnectionError, OSError) as exc:
            self._mark_closed(f"connection error: {exc}")
        finally:
            pinger.cancel()
            self._mark_closed(self._close_reason or "connection closed")
            self._fail_calls()
            for task in list(self._tasks):
                task.cancel()
            await self.stream.close()
        return self._close_reason

    def _dispatch(self, msg: Message, on_inbound: InboundHandler) -> None:
        if isinstance(msg, Inbound):
            result = on_inbound(self, msg)
            if result is not None:
                self.spawn(result)
        elif isinstance(msg, Ping):
            self.send_nowait(Pong(nonce=msg.nonce, sent_at=msg.sent_at, peer_time=time.time()))
        elif isinstance(msg, Pong):
            now = time.time()
            self.rtt_ms = (now - msg.sent_at) * 1000
            self.clock_skew_s = msg.peer_time - (msg.sent_at + now) / 2
        elif isinstance(msg, Refuse):
            self._mark_closed(f"refused by peer: {msg.reason}")
        elif isinstance(msg, Hello | HelloAck):
            self._mark_closed(f"unexpected {type(msg).__name__} after the handshake")
        else:
            call = self._calls.get(msg.call_id)
            if call is not None:  # answers to cancelled calls are dropped
                call.queue.put_nowait(msg)

    def spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("handler failed on link %s", self.peer_name, exc_info=task.exception())

    async def _ping_loop(self, interval: float, dead_after: float) -> None:
        nonce = itertools.count()
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - self._last_seen > dead_after:
                self._mark_closed(f"peer silent for more than {dead_after:.0f}s")
                await self.stream.close()
                return
            try:
                peer = self.stream.recheck()
                if self.admission is not None:
                    self.admission(peer)
            except AttestationError as exc:
                await self._revoke(f"peer attestation no longer accepted: {exc}")
                return
            except Exception as exc:  # fail closed: a peer that cannot be verified loses its link
                # The local error (a path, an endpoint) stays in our log; the peer learns only the outcome.
                await self._revoke(RECHECK_FAILED, f"{RECHECK_FAILED}: {type(exc).__name__}: {exc}")
                return
            self.send_nowait(Ping(nonce=next(nonce), sent_at=time.time()))

    async def _revoke(self, reason: str, detail: str = "") -> None:
        """Close the link, telling the peer `reason`; our log also gets `detail`, when there is one."""
        logged = detail or reason
        log.warning("closing link to %s: %s", self.peer_name or self.peer.key_id, logged,
                    extra={"fields": {"peer": self.peer.key_id, "reason": logged}})
        self.send_nowait(Refuse(reason=reason))
        self._mark_closed(reason)
        await self.stream.close()

    def _fail_calls(self) -> None:
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call.queue.put_nowait(None)

    def _mark_closed(self, reason: str) -> None:
        if not self._closed.is_set():
            self._close_reason = reason
            self._closed.set()

    @property
    def close_reason(self) -> str:
        return self._close_reason

    @property
    def idle(self) -> bool:
        """No request in flight in either direction."""
        return not self._calls and not self._tasks

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def close(self, reason: str = "closed locally") -> None:
        self._mark_closed(reason)
        await self.stream.close()

    async def wait_closed(self) -> None:
        await self._closed.wait()


# -- hello exchange ------------------------------------------------------------------------------------------
async def dial_hello(stream: TlsStream, hello: Hello, *, timeout: float = 10.0) -> Connection:
    """Dialer side: send our Hello, wait for the ack. A refusal raises ProtocolError with the peer's reason."""
    conn = Connection(stream, name=hello.name)
    conn.send_nowait(hello)
    try:
        msg = await conn.read_message(timeout)
    except ConnectionLost:
        # TLS 1.3: a server that refused our certificate only says so after our handshake returned.
        raise ProtocolError("the peer closed the link before acknowledging our hello "
                            "(it probably refused our attestation; see its log)") from None
    if isinstance(msg, Refuse):
        await stream.close()
        raise ProtocolError(f"refused by peer: {msg.reason}")
    if not isinstance(msg, HelloAck):
        await stream.close()
        raise ProtocolError(f"expected hello_ack, got {type(msg).__name__}")
    conn.version = msg.version
    conn.peer_name = msg.name
    return conn


async def accept_hello(stream: TlsStream, *, name: str, allowed_roles: set[str], timeout: float = 10.0,
                       admit: Callable[[Hello], None] | None = None) -> tuple[Connection, Hello]:
    """Listener side: read the peer's Hello, check version and role (and `admit`, the listener's own rules, which
    raises AttestationError or ProtocolError to refuse what the hello announces), ack or refuse (then raise)."""
    conn = Connection(stream, name=name)
    msg = await conn.read_message(timeout)
    reason = None
    if not isinstance(msg, Hello):
        reason = f"expected hello, got {type(msg).__name__}"
    elif msg.max_version < MIN_PROTOCOL_VERSION or msg.min_version > PROTOCOL_VERSION:
        reason = (f"protocol version mismatch: peer speaks {msg.min_version}..{msg.max_version}, "
                  f"we speak {MIN_PROTOCOL_VERSION}..{PROTOCOL_VERSION}")
    elif msg.role != stream.peer.role:
        reason = f"hello claims role {msg.role!r} but the attested certificate says {stream.peer.role!r}"
    elif msg.role not in allowed_roles:
        reason = f"role {msg.role!r} may not connect here"
    elif admit is not None:
        try:
            admit(msg)
        except (AttestationError, ProtocolError) as exc:
            reason = str(exc)
    if reason is not None:
        conn.send_nowait(Refuse(reason=reason))
        with contextlib.suppress(ConnectionError, OSError):
            await stream.drain()
        await stream.close()
        raise ProtocolError(reason)
    assert isinstance(msg, Hello)
    conn.version = min(PROTOCOL_VERSION, msg.max_version)
    conn.peer_name = msg.name
    conn.send_nowait(HelloAck(version=conn.version, name=name))
    return conn, msg


def hello(role: str, name: str, **params: object) -> Hello:
    return Hello(role=role, name=name, min_version=MIN_PROTOCOL_VERSION, max_version=PROTOCOL_VERSION, **params)
