"""The Oblivious HTTP gateway (RFC 9458) on the proxy: what a relay forwards from users' devices.

A relay sends each encapsulated request as the body of a `Request` to `OHTTP_ENDPOINT` on its own attested
link, as the paying client of record. The gateway opens it with its current keys (`ohttp/keyring.py`: rotated
every `ohttp_rotate_s`, the previous one still accepted for `ohttp_overlap_s`; a replayed encapsulation is
refused), runs the request inside exactly as a client's (`Forwarder.serve`, billed to the relay's channel),
and answers the relay with the encapsulated answer plus, in the clear, what the relay pays: usage, cost and its
voucher. A chunked request (`OHTTP_CHUNKED_ENDPOINT`, `message/ohttp-chunked-req`) gets its answer chunk by
chunk as the worker produces it (each answer frame sealed on its own, in order, the last chunk marked final);
otherwise the answer is collected and encapsulated whole. What cannot be opened is answered in the clear
(status and code: the relay shows it to the device) and charged nothing; what is wrong inside is answered inside
the encapsulation.

The key configuration reaches devices through the relay (`OHTTP_KEYS_ENDPOINT`), signed by this proxy's RA-TLS
key (`wire/oblivious.py` `SignedKeys`), so a device verifies the attestation before it encapsulates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import msgspec

from cocoon.config import ProxyConfig
from cocoon.core.errors import ApiError, ErrorCode
from cocoon.core.usage import Usage
from cocoon.ohttp.encap import ChunkSealer, OhttpError, ResponseKeys
from cocoon.ohttp.keyring import KeyRing
from cocoon.proxy.forwarding import ClientLink, Forwarder
from cocoon.ratls.cert import IdentityIssuer
from cocoon.wire import frames, oblivious
from cocoon.wire.connection import Connection
from cocoon.wire.messages import (
    Answer,
    Message,
    ModelsQuery,
    ModelsReply,
    Request,
    ResponseChunk,
    ResponseEnd,
    ResponseError,
    ResponseHead,
)

log = logging.getLogger(__name__)

ENDPOINTS = frozenset({oblivious.OHTTP_ENDPOINT, oblivious.OHTTP_CHUNKED_ENDPOINT, oblivious.OHTTP_KEYS_ENDPOINT})
_ENVELOPE_BYTES = 4096  # what encapsulation, Binary HTTP and the wire request add around a body


def _for_device(msg: Answer) -> Answer:
    """An answer as the device gets it: without the relay's voucher (the relay's money, not the user's)."""
    return msgspec.structs.replace(msg, voucher=None) if isinstance(msg, ResponseEnd | ResponseError) else msg


class _Out:
    """Where the inner request's answers go instead of a link; remembers the last one (what the relay pays). Like a
    link, it takes answers without waiting (`send_soon`, how a RunningRequest relays a stream's chunks) and delivers
    them, in order, at the next `drain` or `send`."""

    def __init__(self) -> None:
        self.last: Answer | None = None
        self._soon: list[Message] = []

    def send_soon(self, msg: Message) -> None:
        self._soon.append(msg)

    async def drain(self) -> None:
        soon, self._soon = self._soon, []
        for msg in soon:
            await self._send(msg)

    async def send(self, msg: Message) -> None:
        await self.drain()
        await self._send(msg)

    async def _send(self, msg: Message) -> None:
        self.last = msg  # type: ignore[assignment]  # a RunningRequest sends answers only
        await self._deliver(_for_device(msg))  # type: ignore[arg-type]

    async def _deliver(self, msg: Answer) -> None:
        raise NotImplementedError


class _Collected(_Out):
    """Kept, then encapsulated whole."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[Answer] = []

    async def _deliver(self, msg: Answer) -> None:
        self.answers.append(msg)


class _Streamed(_Out):
    """Each answer sealed as a chunk and sent to the relay at once (the head and response nonce first)."""

    def __init__(self, conn: Connection, call_id: int, sealer: ChunkSealer) -> None:
        super().__init__()
        self.conn = conn
        self.call_id = call_id
        self.sealer = sealer
        self.started = False

    async def _deliver(self, msg: Answer) -> None:
        await self._start()
        await self.conn.send(ResponseChunk(call_id=self.call_id, data=self.sealer.seal(frames.encode(msg))))

    async def _start(self) -> None:
        if not self.started:
            self.started = True
            await self.conn.send(ResponseHead(call_id=self.call_id, status=200))
            await self.conn.send(ResponseChunk(call_id=self.call_id, data=self.sealer.head))

    async def finish(self) -> None:
        await self._start()
        await self.conn.send(ResponseChunk(call_id=self.call_id, data=self.sealer.seal(b"", final=True)))


class Gateway:
    def __init__(self, cfg: ProxyConfig, forwarder: Forwarder, identity: IdentityIssuer,
                 models: Callable[[ModelsQuery], ModelsReply], clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.forwarder = forwarder
        self.identity = identity
        self.models = models  # how the proxy answers a models query on a link
        self.clock = clock
        self.ring = KeyRing(clock(), rotate_s=cfg.ohttp_rotate_s, overlap_s=cfg.ohttp_overlap_s)
        self.outcomes: dict[str, int] = {}  # counters only: the gateway keeps nothing per request

    def signed_keys(self) -> bytes:
        return oblivious.SignedKeys.sign(self.identity.current(), self.ring.published(self.clock())).encode()

    def stats(self) -> dict[str, object]:
        return {"key_id": self.ring.current(self.clock()).key_id, "rotations": self.ring.rotations,
                "replays_refused": self.ring.replays, "outcomes": dict(self.outcomes)}

    async def serve(self, client: ClientLink, req: Request) -> None:
        """Answer a relay's call `req.call_id` (an encapsulated request, or a request for the keys)."""
        conn = client.conn
        try:
            if req.endpoint == oblivious.OHTTP_KEYS_ENDPOINT:
                await conn.send(ResponseHead(call_id=req.call_id, status=200))
                await conn.send(ResponseChunk(call_id=req.call_id, data=self.signed_keys()))
                await conn.send(ResponseEnd(call_id=req.call_id, usage=Usage()))
                return
            chunked = req.endpoint == oblivious.OHTTP_CHUNKED_ENDPOINT
            plain, keys = self._open(req, chunked)
        except ApiError as exc:
            self._count(ErrorCode.label(exc.code))
            await conn.send(ResponseError.from_api(exc, req.call_id))
            return
        out = _Streamed(conn, req.call_id, keys.chunk_sealer()) if chunked else _Collected()
        try:
            await self._run(client, plain, out)
            await self._finish(req.call_id, conn, keys, out)
        except ConnectionError:  # the relay's link broke: the request settled what it delivered, nothing to send
            self._count("relay_link_lost")

    async def _finish(self, call_id: int, conn: Connection, keys: ResponseKeys, out: _Out) -> None:
        last = out.last
        self._count("ok" if isinstance(last, ResponseEnd | ModelsReply) else "inner_error")
        if isinstance(out, _Streamed):
            await out.finish()
        else:
            await conn.send(ResponseHead(call_id=call_id, status=200))
            sealed = keys.seal_response(oblivious.inner_response(out.answers))  # type: ignore[attr-defined]
            await conn.send(ResponseChunk(call_id=call_id, data=sealed))
        # in the clear, to the relay: what it pays for this answer, nothing of what the answer says
        paid = last if isinstance(last, ResponseEnd | ResponseError) else None
        await conn.send(ResponseEnd(call_id=call_id, usage=(paid.usage if paid else None) or Usage(),
                                    cost_nanoton=paid.cost_nanoton if paid else 0,
                                    voucher=paid.voucher if paid else None,
                                    coefficient=paid.coefficient if paid else 0))

    def _open(self, req: Request, chunked: bool) -> tuple[bytes, ResponseKeys]:
        if len(req.body) > self.cfg.max_body_bytes + _ENVELOPE_BYTES:
            raise ApiError(413, f"the encapsulated request has {len(req.body)} bytes, over the gateway's limit of "
                                f"{self.cfg.max_body_bytes + _ENVELOPE_BYTES}", code=ErrorCode.REQUEST_TOO_LARGE)
        try:
            return self.ring.open(req.body, self.clock(), chunked=chunked)
        except OhttpError as exc:
            raise oblivious.ohttp_api_error(exc) from None

    async def _run(self, client: ClientLink, plain: bytes, out: _Out) -> None:
        try:
            inner = oblivious.read_inner(plain)
        except ApiError as exc:  # what is wrong inside is said inside: the relay learns nothing of it
            await out.send(ResponseError.from_api(exc, 0))
            return
        if isinstance(inner, ModelsQuery):
            await out.send(self.models(inner))
            return
        # the inner request runs as the relay's, billed to its channel; its answers go to `out`, not to the link
        inner_client = ClientLink(conn=client.conn, key=client.key, account=client.account)
        await self.forwarder.serve(inner_client, msgspec.structs.replace(inner, call_id=0), out=out)
        await out.drain()  # what a stream broken off left queued still reaches the device, in order
        if out.last is None:
            await out.send(ResponseError.from_api(ApiError(502, "the request ended without an answer",
                                                           code=ErrorCode.UPSTREAM_ERROR), 0))

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
