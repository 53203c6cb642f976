"""A multiplexed, attested link on asyncio: the driver of a LinkProtocol (wire/protocol.py) over a TlsStream.

The protocol decides (hello exchange, call table, cancellation, pings); this module moves its bytes, turns a
call's answers into awaitable `Call.next()` (raising `LinkLost` when the link breaks), runs the handlers of
inbound requests as tasks, and pings on a timer. At every ping the peer's certificate is verified again against
the current policy and root registry: a peer whose image was removed, or whose certificate expired, loses the
link within one ping interval, and is sent the reason first; a re-verification that fails for any other reason
closes the link too (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec

from cocoon.attest.types import AttestationError, PeerIdentity
from cocoon.ratls.tls import TlsStream
from cocoon.wire import frames
from cocoon.wire.messages import (
    Answer,
    ChunkAck,
    Hello,
    Inbound,
    Message,
    ModelsQuery,
    PartAck,
    Request,
    RequestPart,
    ResponseEnd,
    ResponseError,
    ToCall,
)
from cocoon.wire.parts import Credit
from cocoon.wire.protocol import ConnectionLost, LinkLost, LinkProtocol, LinkState, ProtocolError, hello

__all__ = ["Call", "Connection", "ConnectionLost", "LinkLost", "ProtocolError", "accept_hello", "dial_hello",
           "hello"]

log = logging.getLogger(__name__)

RECHECK_FAILED = "peer attestation could not be re-verified"

InboundHandler = Callable[["Connection", Inbound], Awaitable[None] | None]
_encode = frames.encode
# the answers that end a call; matched by type, since isinstance on msgspec structs costs ~15x (every frame)
_FINAL = frozenset((ResponseEnd, ResponseError))


class Call:
    """An outgoing request: its answers arrive on `queue` in order, ending with an end or error; `next()` raises
    LinkLost instead if the link breaks first. `write` sends the bytes of a frame (a cancel) on the link. The call
    is its own sink (wire/protocol.py): PartAcks move its upload `credit` rather than reaching `queue`."""

    __slots__ = ("_proto", "_write", "call_id", "credit", "done", "queue")

    def __init__(self, proto: LinkProtocol, write: Callable[[bytes], None]) -> None:
        self._proto = proto
        self._write = write
        self.queue: asyncio.Queue[Answer | None] = asyncio.Queue()  # None: the link broke
        self.credit: Credit | None = None  # made by the first part sent (Connection.send_part)
        self.call_id = proto.open_call(self)
        self.done = False

    def put_nowait(self, msg: ToCall | None) -> None:
        if type(msg) is PartAck:
            if self.credit is not None:
                self.credit.took(msg.taken, msg.attempt)
            return
        if msg is None and self.credit is not None:
            self.credit.fail()
        self.queue.put_nowait(msg)  # type: ignore[arg-type]

    def ack_chunks(self, taken: int) -> None:
        """Tell the callee we took `taken` chunks of its answer so far (a `parts` request's answer is paced)."""
        if not self.done and not self._proto.closed:
            self._write(_encode(ChunkAck(call_id=self.call_id, taken=taken)))

    async def next(self, timeout: float | None = None) -> Answer:
        try:  # an answer already here needs no timer: wait_for costs a task and a timer handle per message
            msg = self.queue.get_nowait()
        except asyncio.QueueEmpty:
            msg = await asyncio.wait_for(self.queue.get(), timeout) if timeout else await self.queue.get()
        if msg is None:
            self.done = True
            self.queue.put_nowait(None)  # every later next() says so too
            raise LinkLost(self._proto.lost_message())
        if type(msg) in _FINAL:
            self.done = True
            self._proto.end_call(self.call_id)
        return msg

    def ready(self) -> bool:
        """Whether next() would answer without waiting (an answer, or the link's loss, is already queued)."""
        return not self.queue.empty()

    def cancel(self, reason: str = "cancelled by the requester") -> None:
        """Stop the remote work; harmless after the answer ended or the link broke."""
        if self.done:
            return
        self.done = True
        if self.credit is not None:
            self.credit.fail()
        frame = self._proto.cancel_call(self.call_id, reason)
        if frame:
            self._write(frame)


class Connection:
    """The asyncio driver of one link: moves bytes between a TlsStream and its LinkProtocol, hands inbound
    messages to the link's owner, runs their handlers as tasks, and pings (re-verifying the peer each time)."""

    def __init__(self, stream: TlsStream, proto: LinkProtocol) -> None:
        self.stream = stream
        self.peer: PeerIdentity = stream.peer
        self._proto = proto
        self._early: list[Inbound] = []  # arrived with the hello exchange, before `run` took a handler
        self._tasks: set[asyncio.Task[None]] = set()
        # What the application checks of the peer beyond its certificate (a worker's engine against the models it
        # serves), again at every re-verification; AttestationError ends the link.
        self.peer_check: Callable[[PeerIdentity], None] | None = None

    # -- protocol state ------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._proto.name

    @property
    def peer_name(self) -> str:
        return self._proto.peer_name

    @property
    def version(self) -> int:
        return self._proto.version

    @property
    def rtt_ms(self) -> float | None:
        return self._proto.rtt_ms

    @property
    def clock_skew_s(self) -> float | None:
        return self._proto.clock_skew_s

    @property
    def close_reason(self) -> str:
        return self._proto.close_reason

    @property
    def closed(self) -> bool:
        return self._proto.closed

    @property
    def idle(self) -> bool:
        """No request in flight in either direction."""
        return not self._proto.open_calls and not self._tasks

    # -- sending -------------------------------------------------------------------------------------------
    def send_nowait(self, msg: Message) -> None:
        if self._proto.closed:
            return
        try:
            self.stream.write(_encode(msg))
        except (ConnectionError, OSError) as exc:
            self._proto.close(f"write failed: {exc}")

    def _write(self, data: bytes) -> None:
        """Send what the protocol produced (hello, ack, refusal, pong, ping, cancel)."""
        try:
            self.stream.write(data)
        except (ConnectionError, OSError) as exc:
            self._proto.close(f"write failed: {exc}")

    def _flush(self) -> None:
        data = self._proto.data_to_send()
        if data:
            self._write(data)

    async def send(self, msg: Message) -> None:
        self.send_soon(msg)
        await self.drain()

    def send_soon(self, msg: Message) -> None:
        """Queue `msg` for sending without waiting for the peer to take it; ConnectionLost once the link closed.
        A relay queuing several messages in a row waits once, with `drain`, after the last."""
        if self._proto.closed:
            raise ConnectionLost(self._proto.close_reason or "connection closed")
        self.send_nowait(msg)

    async def drain(self) -> None:
        """Wait until the peer takes what was queued (flow control); ConnectionLost when the link broke."""
        try:
            await self.stream.drain()
        except (ConnectionError, OSError) as exc:
            self._proto.close(f"write failed: {exc}")
            raise ConnectionLost(self._proto.close_reason) from None

    def open_call(self) -> Call:
        return Call(self._proto, self._write)

    async def request(self, req: Request) -> Call:
        """Send `req` as a new call on this link; `req` itself is left as it was (its call_id is ignored)."""
        call = self.open_call()
        await self.send(msgspec.structs.replace(req, call_id=call.call_id))
        return call

    async def send_part(self, call: Call, data: bytes, last: bool, attempt: int = 0) -> bool:
        """Send the next part of `call`'s body (of its sending `attempt`) once the callee's credit allows
        (wire/parts.py); False, sending nothing, when the callee asked for the body again meanwhile; ConnectionError
        when the call or link ended first."""
        if call.credit is None:
            call.credit = Credit()
        if not await call.credit.wait(attempt):
            return False
        if call.done:
            raise ConnectionLost("the call ended")
        call.credit.spend()
        await self.send(RequestPart(call_id=call.call_id, data=data, last=last, attempt=attempt))
        return True

    async def query_models(self, timeout: float = 5.0, seal_for: str = "") -> Answer:
        call = self.open_call()
        await self.send(ModelsQuery(call_id=call.call_id, seal_for=seal_for))
        try:
            return await call.next(timeout)
        finally:
            self._proto.end_call(call.call_id)

    # -- receiving -----------------------------------------------------------------------------------------
    async def _hello_exchange(self) -> None:
        """Read until the protocol leaves the hello exchange (open or closed); ConnectionLost if the peer left."""
        self._flush()
        while self._proto.state is LinkState.AWAIT_HELLO or self._proto.state is LinkState.AWAIT_ACK:
            data = await self.stream.read()
            if not data:
                raise ConnectionLost("peer closed the connection")
            self._early.extend(self._proto.receive_data(data))
            self._flush()

    async def run(self, on_inbound: InboundHandler, *, ping_interval: float = 10.0, dead_after: float = 35.0) -> str:
        """Dispatch messages until the link ends; returns why it ended. Open calls raise LinkLost."""
        proto = self._proto
        proto.dead_after = dead_after
        pinger = asyncio.create_task(self._ping_loop(ping_interval))
        try:
            early, self._early = self._early, []
            for msg in early:
                self._deliver(msg, on_inbound)
            read = self.stream.read
            receive = proto.receive_data
            while not proto.closed:
                data = await read()
                if not data:
                    proto.close("peer closed the connection")
                    break
                inbound = receive(data)
                self._flush()
                for msg in inbound:
                    self._deliver(msg, on_inbound)
        except (ConnectionError, OSError) as exc:
            proto.close(f"connection error: {exc}")
        finally:
            pinger.cancel()
            proto.connection_lost()
            for task in list(self._tasks):
                task.cancel()
            await self.stream.close()
        return proto.close_reason

    def _deliver(self, msg: Inbound, on_inbound: InboundHandler) -> None:
        result = on_inbound(self, msg)
        if result is not None:
            self.spawn(result)

    def spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("handler failed on link %s", self.peer_name, exc_info=task.exception())

    async def _ping_loop(self, interval: float) -> None:
        proto = self._proto
        while True:
            await asyncio.sleep(interval)
            if not proto.check_alive():
                await self.stream.close()
                return
            try:
                peer = self.stream.recheck()
                if self.peer_check is not None:
                    self.peer_check(peer)
            except AttestationError as exc:
                await self._revoke(f"peer attestation no longer accepted: {exc}")
                return
            except Exception as exc:  # fail closed: a peer that cannot be verified loses its link
                # The local error (a path, an endpoint) stays in our log; the peer learns only the outcome.
                await self._revoke(RECHECK_FAILED, f"{RECHECK_FAILED}: {type(exc).__name__}: {exc}")
                return
            self._write(proto.ping())

    async def _revoke(self, reason: str, detail: str = "") -> None:
        """Close the link, telling the peer `reason`; our log also gets `detail`, when there is one."""
        logged = detail or reason
        log.warning("closing link to %s: %s", self.peer_name or self.peer.key_id, logged,
                    extra={"fields": {"peer": self.peer.key_id, "reason": logged}})
        if not self._proto.closed:
            self._write(self._proto.revoke(reason))
        await self.stream.close()

    async def close(self, reason: str = "closed locally") -> None:
        self._proto.close(reason)
        await self.stream.close()


# -- hello exchange ------------------------------------------------------------------------------------------
async def dial_hello(stream: TlsStream, hello: Hello, *, timeout: float = 10.0) -> Connection:
    """Dialer side: send our Hello, wait for the ack. A refusal raises ProtocolError with the peer's reason."""
    conn = Connection(stream, LinkProtocol.dialer(hello))
    try:
        await asyncio.wait_for(conn._hello_exchange(), timeout)
    except ConnectionLost:
        # TLS 1.3: a server that refused our certificate only says so after our handshake returned.
        raise ProtocolError("the peer closed the link before acknowledging our hello "
                            "(it probably refused our attestation; see its log)") from None
    if conn.closed:
        await stream.close()
        raise ProtocolError(conn.close_reason)
    return conn


async def accept_hello(stream: TlsStream, *, name: str, allowed_roles: set[str], timeout: float = 10.0,
                       admit: Callable[[Hello], None] | None = None) -> tuple[Connection, Hello]:
    """Listener side: read the peer's Hello, check version and role (and `admit`, the listener's own rules, which
    raises AttestationError or ProtocolError to refuse what the hello announces), ack or refuse (then raise)."""
    proto = LinkProtocol.listener(name=name, peer_role=stream.peer.role, allowed_roles=allowed_roles, admit=admit)
    conn = Connection(stream, proto)
    await asyncio.wait_for(conn._hello_exchange(), timeout)
    if proto.peer_hello is None:  # refused: the refusal was written; let it leave before closing
        with contextlib.suppress(ConnectionError, OSError):
            await stream.drain()
        await stream.close()
        raise ProtocolError(proto.close_reason)
    return conn, proto.peer_hello
