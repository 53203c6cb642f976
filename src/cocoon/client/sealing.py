"""Sealing each request to workers this client verified itself (cocoon/seal; docs/ARCHITECTURE.md §2).

The proxy hands out, per model, the RA-TLS certificates of some workers serving it. Each is verified here with
this client's own policy (the `CertVerifier` code that admits its links, for role `worker`), and only the HPKE
keys of those that pass are sealed to: a request is sealed to up to `candidates` of them, picked at random, so
that the proxy can move it to another if one fails. The verified keys are kept per model for `ttl_s`; a request
that no linked worker can open any more (`seal_keys_stale`: they restarted with new keys) is sealed again to
freshly fetched ones.

`RequestSealer.call(req)` sends a request sealed and gives a `SealedCall`, read like the link's own call: its
answers come out opened (each chunk in order, the end marker checked), or it raises `SealError` (502
`sealed_answer_invalid`) at the first one that does not open. The client API and the SDK both read answers so.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from cocoon.attest.types import AttestationError, PeerIdentity
from cocoon.client.oblivious import RelayCall, RelayLink, RelayStream
from cocoon.client.proxy_link import ProxyLink
from cocoon.core.errors import ApiError, ErrorCode, model_not_found
from cocoon.openai.content import is_deterministic
from cocoon.ratls.cert import CertVerifier
from cocoon.seal import AnswerOpener, SealedRequest, SealError, key_id, seal_request
from cocoon.wire.connection import Call
from cocoon.wire.messages import (
    MEDIA_WORKLOAD,
    Message,
    Request,
    ResponseChunk,
    ResponseEnd,
    ResponseError,
    ResponseHead,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Verified:
    workers: tuple[PeerIdentity, ...]
    fetched_at: float


class RequestSealer:
    def __init__(self, link: ProxyLink | RelayLink, verifier: CertVerifier, candidates: int,
                 ttl_s: float = 30.0) -> None:
        self.link = link
        self.verifier = verifier
        self.candidates = candidates
        self.ttl_s = ttl_s
        self._verified: dict[str, _Verified] = {}
        self.refused_workers = 0  # certificates that failed this client's checks: never sealed to

    async def workers(self, model: str, *, fresh: bool = False) -> tuple[PeerIdentity, ...]:
        """Workers serving `model` whose attestation passed this client's policy; ApiError when there is none."""
        known = self._verified.get(model)
        now = time.monotonic()
        if known is not None and not fresh and now - known.fetched_at < self.ttl_s:
            return known.workers
        reply = await self.link.models(seal_for=model)
        passed: list[PeerIdentity] = []
        reasons: list[str] = []
        for der in reply.certificates:
            try:
                peer = self.verifier.verify(der)
            except AttestationError as exc:
                self.refused_workers += 1
                reasons.append(str(exc))
                log.warning("refused a worker's certificate: nothing is sealed to it", extra={"fields": {
                    "model": model, "reason": str(exc)}})
                continue
            if peer.hpke_public_key:
                passed.append(peer)
        if not passed:
            self._verified.pop(model, None)
            if not any(m.id == model for m in reply.models) and not (model == MEDIA_WORKLOAD and reply.media_workers):
                raise model_not_found(model)
            why = f": {reasons[0]}" if reasons else " (the proxy offered no worker certificate)"
            raise ApiError(503, f"no worker serving `{model}` passed this client's attestation checks, so the request "
                                f"was not sealed or sent{why}", type="service_unavailable",
                           code=ErrorCode.NO_ATTESTED_WORKER, retry_after=2)
        self._verified[model] = _Verified(tuple(passed), now)
        return tuple(passed)

    async def request(self, req: Request, send: Send | None = None) -> tuple[SealedCall, bytes]:
        """`req` sent sealed: its answers, opened as they are read, and the voucher key of the proxy it went to
        (as the link's `request` gives it). `send`: how a sealed request goes out, when not by the link's
        `request` (a media job sends its parts after it)."""
        sealed = SealedCall(self, req, send)
        await sealed.send()
        return sealed, sealed.proxy_key

    async def seal(self, req: Request, *, fresh: bool = False) -> tuple[Request, SealedRequest]:
        """`req` with its body sealed to up to `candidates` verified workers of its model (bound to its envelope),
        and what opens their answer. `req` is not changed. A body asking for one answer only is marked so in the
        envelope (`deterministic`): the proxy, which cannot read it, spot-checks sealed requests by that mark."""
        workers = await self.workers(req.model, fresh=fresh)
        chosen = random.sample(workers, min(self.candidates, len(workers)))
        sent = msgspec.structs.replace(req, sealed=True, body=b"", deterministic=is_deterministic(req.body))
        sealed = seal_request(req.body, [w.hpke_public_key for w in chosen], sent.envelope())
        return msgspec.structs.replace(sent, body=sealed.sealed), sealed

    def worker_key(self, model: str, seal_key_id: bytes) -> bytes | None:
        """The attested RA-TLS key of the verified worker of `model` holding HPKE key `seal_key_id`."""
        known = self._verified.get(model)
        for peer in known.workers if known else ():
            if key_id(peer.hpke_public_key) == seal_key_id:
                return peer.public_key
        return None


LinkCall = Call | RelayCall | RelayStream
# sends a sealed request (the wire Request, and what seals and opens the rest of it): its call and the voucher key
# of the proxy it went to
Send = Callable[[Request, SealedRequest], Awaitable[tuple[LinkCall, bytes]]]


class SealedCall:
    """One sealed request's answers, opened in order as they are read. A first answer saying that no linked worker
    holds a key it was sealed to (`seal_keys_stale`: refused before any work, so never charged) is not handed on:
    the request is sealed again, once, to freshly fetched workers and sent again under the same id."""

    __slots__ = ("_call", "_opener", "_resealed", "_sealed", "_sealer", "_send", "_started", "deterministic",
                 "proxy_key", "req", "worker_key")

    def __init__(self, sealer: RequestSealer, req: Request, send: Send | None = None) -> None:
        self._sealer = sealer
        self._send = send
        self.req = req
        self._call: LinkCall | None = None
        self._sealed: SealedRequest | None = None
        self._opener: AnswerOpener | None = None
        self._started = False  # an answer was handed on
        self._resealed = False
        self.proxy_key = b""
        self.worker_key = b""  # the attested RA-TLS key of the worker whose HPKE key its answer's head names
        self.deterministic = False  # sent marked deterministic: its receipt states the answer's content digest

    async def send(self, *, fresh: bool = False) -> None:
        sent, self._sealed = await self._sealer.seal(self.req, fresh=fresh)
        self.deterministic = sent.deterministic
        if self._send is not None:
            self._call, self.proxy_key = await self._send(sent, self._sealed)
        else:
            self._call, self.proxy_key = await self._sealer.link.request(sent)

    @property
    def call_id(self) -> int:
        return self._call.call_id if self._call is not None else 0

    @property
    def done(self) -> bool:
        return self._call is None or self._call.done

    def ready(self) -> bool:
        return self._call is not None and self._call.ready()

    def ack_chunks(self, taken: int) -> None:
        """A `parts` request's answer is paced: the chunks taken so far (wire/parts.py)."""
        if isinstance(self._call, Call):
            self._call.ack_chunks(taken)

    def cancel(self, reason: str = "") -> None:
        if self._call is not None:
            self._call.cancel(reason)

    async def next(self, timeout: float | None = None) -> Message:
        assert self._call is not None and self._sealed is not None
        msg = await self._call.next(timeout)
        kind = type(msg)
        if not self._started and kind is ResponseError and msg.code == ErrorCode.SEAL_KEYS_STALE \
                and not self._resealed:  # type: ignore[union-attr]
            self._resealed = True
            await self.send(fresh=True)
            return await self.next(timeout)
        self._started = True
        if kind is ResponseHead:
            self._opener = self._sealed.answer(msg.seal_key_id)  # type: ignore[union-attr]
            self.worker_key = self._sealer.worker_key(self.req.model, msg.seal_key_id) or b""  # type: ignore[union-attr]
        elif kind is ResponseChunk:
            return msgspec.structs.replace(msg, data=self._opener_now().open(msg.data))  # type: ignore[arg-type]
        elif kind is ResponseEnd:
            self._opener_now().end(msg.sealed_end)  # type: ignore[union-attr]
        return msg

    def _opener_now(self) -> AnswerOpener:
        if self._opener is None:
            raise SealError(502, "a sealed answer's chunk or end came before its head named the worker's key",
                            ErrorCode.SEALED_ANSWER_INVALID)
        return self._opener
