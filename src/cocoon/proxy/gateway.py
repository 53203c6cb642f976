"""The Oblivious HTTP gateway (RFC 9458) on the proxy: what a relay forwards from users' devices.

A relay sends each encapsulated request as the body of a `Request` to `OHTTP_ENDPOINT` on its own attested
link, as the paying client of record. The gateway opens it with its current keys (`ohttp/keyring.py`: rotated
every `ohttp_rotate_s`, the previous one still accepted for `ohttp_overlap_s`; a replayed encapsulation is
refused), runs the request inside exactly as a client's (`Forwarder.serve`, billed to the relay's channel),
and answers the relay with the encapsulated answer plus, in the clear, what the relay pays: usage, cost and its
voucher. What cannot be opened is answered in the clear (status and code: the relay shows it to the device) and
charged nothing; what is wrong inside is answered inside the encapsulation.

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
from cocoon.ohttp.encap import OhttpError, ResponseKeys
from cocoon.ohttp.keyring import KeyRing
from cocoon.proxy.forwarding import ClientLink, Forwarder
from cocoon.ratls.cert import IdentityIssuer
from cocoon.wire import oblivious
from cocoon.wire.messages import (
    Answer,
    Message,
    ModelInfo,
    ModelsQuery,
    ModelsReply,
    Request,
    ResponseChunk,
    ResponseEnd,
    ResponseError,
    ResponseHead,
)

log = logging.getLogger(__name__)

ENDPOINTS = frozenset({oblivious.OHTTP_ENDPOINT, oblivious.OHTTP_KEYS_ENDPOINT})
_ENVELOPE_BYTES = 4096  # what encapsulation, Binary HTTP and the wire request add around a body


class _Collected:
    """Where the inner request's answers go instead of a link: kept, then encapsulated whole."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []

    async def send(self, msg: Message) -> None:
        self.answers.append(msg)  # type: ignore[arg-type]  # a RunningRequest sends answers only


class Gateway:
    def __init__(self, cfg: ProxyConfig, forwarder: Forwarder, identity: IdentityIssuer,
                 models: Callable[[], list[ModelInfo]], clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.forwarder = forwarder
        self.identity = identity
        self.models = models
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
        try:
            if req.endpoint == oblivious.OHTTP_KEYS_ENDPOINT:
                await self._answer(client, req.call_id, self.signed_keys(), Usage())
                return
            answers, keys = await self._run(client, req)
        except ApiError as exc:
            self._count(ErrorCode.label(exc.code))
            await client.conn.send(ResponseError.from_api(exc, req.call_id))
            return
        last = answers[-1]
        self._count("ok" if isinstance(last, ResponseEnd | ModelsReply) else "inner_error")
        paid = last if isinstance(last, ResponseEnd | ResponseError) else None
        # the device gets its answer without the relay's voucher: that is the relay's money, not the user's
        inner = [msgspec.structs.replace(a, voucher=None) if isinstance(a, ResponseEnd | ResponseError) else a
                 for a in answers]
        sealed = keys.seal_response(oblivious.inner_response(inner))
        await self._answer(client, req.call_id, sealed, (paid.usage if paid else None) or Usage(),
                           paid.cost_nanoton if paid else 0, paid.voucher if paid else None,
                           paid.coefficient if paid else 0)

    async def _run(self, client: ClientLink, req: Request) -> tuple[list[Answer], ResponseKeys]:
        if len(req.body) > self.cfg.max_body_bytes + _ENVELOPE_BYTES:
            raise ApiError(413, f"the encapsulated request has {len(req.body)} bytes, over the gateway's limit of "
                                f"{self.cfg.max_body_bytes + _ENVELOPE_BYTES}", code=ErrorCode.REQUEST_TOO_LARGE)
        try:
            plain, keys = self.ring.open(req.body, self.clock())
        except OhttpError as exc:
            raise oblivious.ohttp_api_error(exc) from None
        try:
            inner = oblivious.read_inner(plain)
        except ApiError as exc:  # what is wrong inside is said inside: the relay learns nothing of it
            return [ResponseError.from_api(exc, 0)], keys
        if isinstance(inner, ModelsQuery):
            return [ModelsReply(call_id=0, models=self.models())], keys
        # the inner request runs as the relay's, billed to its channel; its answers are collected, not sent
        out = _Collected()
        inner_client = ClientLink(conn=client.conn, key=client.key, account=client.account)
        await self.forwarder.serve(inner_client, msgspec.structs.replace(inner, call_id=0), out=out)
        if not out.answers:
            return [ResponseError.from_api(ApiError(502, "the request ended without an answer",
                                                    code=ErrorCode.UPSTREAM_ERROR), 0)], keys
        return out.answers, keys

    async def _answer(self, client: ClientLink, call_id: int, data: bytes, usage: Usage, cost_nanoton: int = 0,
                      voucher: object = None, coefficient: int = 0) -> None:
        conn = client.conn
        await conn.send(ResponseHead(call_id=call_id, status=200))
        await conn.send(ResponseChunk(call_id=call_id, data=data))
        await conn.send(ResponseEnd(call_id=call_id, usage=usage, cost_nanoton=cost_nanoton,
                                    voucher=voucher, coefficient=coefficient))  # type: ignore[arg-type]

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
