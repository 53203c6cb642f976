"""The relay process: users' devices POST `message/ohttp-req` to `/ohttp`; each is forwarded, as it came, to the
proxy's gateway on the relay's own attested link and paid from the relay's own channel (`client/node.py`
`ProxyUpstream`, as `cocoon client` pays); the `message/ohttp-res` comes back as it came. A
`message/ohttp-chunked-req` gets its `message/ohttp-chunked-res` passed on chunk by chunk as the gateway sends it
(a streamed answer).

What the relay keeps about users: counters per subscriber token (labelled by a hash of the token, never the
token) and per outcome. It writes no line per request and never reads a device's address: nothing it logs,
stores or shows puts an address next to a request. It never holds a key that opens what it carries.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from cocoon.client.node import ProxyUpstream
from cocoon.client.oblivious import GATEWAY_PATH, KEYS_HEADER, KEYS_PATH, SIGNED_KEYS_MEDIA_TYPE, SIGNED_KEYS_PATH
from cocoon.config import ConfigError, RelayConfig, is_loopback
from cocoon.core.errors import ApiError, ErrorCode
from cocoon.core.ids import new_request_id
from cocoon.observe.stats import StatsServer
from cocoon.ohttp.encap import (
    CHUNKED_REQUEST_MEDIA_TYPE,
    CHUNKED_RESPONSE_MEDIA_TYPE,
    REQUEST_MEDIA_TYPE,
    RESPONSE_MEDIA_TYPE,
)
from cocoon.ohttp.keys import KEYS_MEDIA_TYPE
from cocoon.openai import http
from cocoon.runtime import serve_until
from cocoon.wire.connection import Call, LinkLost
from cocoon.wire.messages import Answer, Request, ResponseChunk, ResponseEnd, ResponseError, ResponseHead
from cocoon.wire.oblivious import OHTTP_CHUNKED_ENDPOINT, OHTTP_ENDPOINT, OHTTP_KEYS_ENDPOINT, SignedKeys

log = logging.getLogger(__name__)

ENVELOPE_BYTES = 4096  # what encapsulation adds around a request body of the client's max_body_bytes
KEYS_FRESH_S = 30.0  # the gateway's signed keys are asked for again after this long


def subscriber_label(token: str) -> str:
    """What a subscriber's counter is named by: a short hash of its token, which does not reveal the token."""
    return hashlib.sha256(b"cocoon relay subscriber\0" + token.encode()).hexdigest()[:12]


class RelayNode:
    def __init__(self, cfg: RelayConfig) -> None:
        if not is_loopback(cfg.api_host) and not cfg.subscriber_tokens:
            raise ConfigError(f"the relay would listen on {cfg.api_host}, reachable from other machines, and pay for "
                              "anyone: set `subscriber_tokens` in its config")
        if cfg.via_relay:
            raise ConfigError("a relay forwards to a proxy itself: `via_relay` makes no sense here")
        self.cfg = cfg
        self.upstream = ProxyUpstream(cfg)
        self.upstream.dialer.on_change = self.upstream.link_changed  # a lost proxy moves it down the directory
        self._tokens = {token.encode(): subscriber_label(token) for token in cfg.subscriber_tokens}
        # counters only: per subscriber (by label) and per outcome
        self.per_subscriber: dict[str, int] = dict.fromkeys(self._tokens.values(), 0)
        self.outcomes: dict[str, int] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        registry = CollectorRegistry()
        self._requests = Counter("cocoon_relay_requests", "encapsulated requests by outcome", ["outcome"],
                                 registry=registry)
        self.stats = StatsServer("relay", cfg.name, registry, self.jsonstats, token=cfg.stats_token)
        self._keys: tuple[bytes, float] | None = None
        self._keys_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def build_app(self) -> web.Application:
        limit = self.cfg.max_body_bytes + ENVELOPE_BYTES
        app = web.Application(client_max_size=limit, middlewares=[http.error_middleware(limit)])
        app.router.add_get(KEYS_PATH, self.keys)
        app.router.add_get(SIGNED_KEYS_PATH, self.signed_keys)
        app.router.add_post(GATEWAY_PATH, self.forward)
        return app

    async def start(self) -> None:
        await self.stats.start(self.cfg.stats_host, self.cfg.stats_port)
        await self.upstream.start()
        self._runner = web.AppRunner(self.build_app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.api_host, self.cfg.api_port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("relay listening", extra={"fields": {"url": f"http://{self.cfg.api_host}:{self.port}",
                                                      "stats_port": self.stats.port,
                                                      "subscribers": len(self._tokens)}})

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
        await self.upstream.stop()
        await self.stats.stop()

    # -- the gateway's keys ----------------------------------------------------------------------------------------
    async def _signed_keys(self, *, fresh: bool = False) -> bytes:
        async with self._keys_lock:
            if self._keys is not None and not fresh and time.monotonic() - self._keys[1] < KEYS_FRESH_S:
                return self._keys[0]
            req = Request(endpoint=OHTTP_KEYS_ENDPOINT, model="", body=b"", stream=False, include_usage=False,
                          deadline=time.time() + self.cfg.connect_timeout_s, request_id=new_request_id())
            data = b"".join(await self._answer(req, ticket=None))
            self._keys = (data, time.monotonic())
            return data

    async def keys(self, request: web.Request) -> web.Response:
        signed = SignedKeys.decode(await self._signed_keys())
        return web.Response(body=signed.keys, content_type=KEYS_MEDIA_TYPE)

    async def signed_keys(self, request: web.Request) -> web.Response:
        return web.Response(body=await self._signed_keys(), content_type=SIGNED_KEYS_MEDIA_TYPE)

    # -- encapsulated requests -----------------------------------------------------------------------------------
    async def forward(self, request: web.Request) -> web.StreamResponse:
        outcome = "error"
        try:
            chunked = self._admit(request)
            body = await http.read_body(request, self.cfg.max_body_bytes + ENVELOPE_BYTES)
            self.bytes_in += len(body)
            req = Request(endpoint=OHTTP_CHUNKED_ENDPOINT if chunked else OHTTP_ENDPOINT, model="", body=body,
                          stream=chunked, include_usage=False, deadline=time.time() + self.cfg.request_timeout_s,
                          request_id=new_request_id())
            payments = self.upstream.payments
            ticket = payments.begin(req.request_id) if payments is not None else 0
            try:
                if chunked:
                    response = await self._stream(request, req, ticket)
                else:
                    answer = b"".join(await self._answer(req, ticket))
                    self.bytes_out += len(answer)
                    response = web.Response(body=answer, content_type=RESPONSE_MEDIA_TYPE)
            finally:
                if payments is not None:  # a no-op once its end was seen
                    payments.end(ticket, None)
            outcome = "ok"
            return response
        except ApiError as exc:
            outcome = ErrorCode.label(exc.code)
            if exc.code is ErrorCode.OHTTP_UNKNOWN_KEY:  # the device gets the current keys with the refusal
                current = SignedKeys.decode(await self._signed_keys(fresh=True)).keys
                response = http.error_response(exc)
                response.headers[KEYS_HEADER] = current.hex()
                return response
            raise
        finally:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            self._requests.labels(outcome).inc()

    def _admit(self, request: web.Request) -> bool:
        """Whether the device sent a chunked request; ApiError when it may not use the relay or sent something
        else."""
        if self._tokens:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            label = next((label for known, label in self._tokens.items()
                          if hmac.compare_digest(token.strip().encode(), known)), None)
            if scheme.lower() != "bearer" or label is None:
                raise ApiError(401, "missing or unknown subscriber token: send `Authorization: Bearer <token>`",
                               type="authentication_error", code=ErrorCode.INVALID_API_KEY)
            self.per_subscriber[label] += 1
        if request.content_type not in (REQUEST_MEDIA_TYPE, CHUNKED_REQUEST_MEDIA_TYPE):
            raise ApiError(415, f"send an encapsulated request as `Content-Type: {REQUEST_MEDIA_TYPE}` (or "
                                f"{CHUNKED_REQUEST_MEDIA_TYPE}), not {request.content_type!r}",
                           code=ErrorCode.UNSUPPORTED_MEDIA_TYPE)
        return request.content_type == CHUNKED_REQUEST_MEDIA_TYPE

    async def _call(self, req: Request, ticket: int | None) -> Call:
        try:
            return await self.upstream.link.call(req)
        except ApiError:
            if ticket is not None and self.upstream.payments is not None:
                self.upstream.payments.unsent(ticket)  # it never reached a proxy: nothing can be charged for it
            raise

    async def _next(self, call: Call, ticket: int | None) -> Answer:
        """The gateway's next answer; an error (the gateway's, or a broken link) raised as ApiError; its charge
        to the payments at the end."""
        try:
            msg = await call.next(self.cfg.request_timeout_s)
        except LinkLost:
            raise ApiError(502, "the link to the proxy broke while the request was in flight",
                           type="api_error", code=ErrorCode.PROXY_LINK_LOST, retry_after=1) from None
        if isinstance(msg, ResponseEnd | ResponseError) and ticket is not None and self.upstream.payments:
            self.upstream.payments.end(ticket, msg)
        if isinstance(msg, ResponseError):
            raise msg.to_api()
        return msg

    async def _answer(self, req: Request, ticket: int | None) -> list[bytes]:
        """The gateway's whole answer to `req` (its data chunks); its charge goes to the payments under `ticket`."""
        call = await self._call(req, ticket)
        parts: list[bytes] = []
        try:
            while True:
                msg = await self._next(call, ticket)
                if isinstance(msg, ResponseChunk):
                    parts.append(msg.data)
                elif isinstance(msg, ResponseEnd):
                    return parts
        finally:
            if not call.done:
                call.cancel("the device went away")

    async def _stream(self, request: web.Request, req: Request, ticket: int) -> web.StreamResponse:
        """A chunked answer, passed on to the device chunk by chunk as the gateway sends them."""
        call = await self._call(req, ticket)
        try:
            first = await self._next(call, ticket)  # an error before the first chunk is the device's HTTP error
            if not isinstance(first, ResponseHead):
                raise ApiError(502, f"the gateway sent {type(first).__name__} before its head",
                               code=ErrorCode.UPSTREAM_ERROR)
            resp = web.StreamResponse(headers={"Content-Type": CHUNKED_RESPONSE_MEDIA_TYPE})
            await resp.prepare(request)
            try:
                while True:
                    try:
                        msg = await self._next(call, ticket)
                    except ApiError:
                        break  # headers are gone: the device sees the answer cut short before its final chunk
                    if isinstance(msg, ResponseChunk):
                        self.bytes_out += len(msg.data)
                        await resp.write(msg.data)
                    elif isinstance(msg, ResponseEnd):
                        break
                await resp.write_eof()
            except ConnectionError:  # the device went away mid-answer: the call is cancelled below
                pass
            return resp
        finally:
            if not call.done:
                call.cancel("the device went away")

    def jsonstats(self) -> dict[str, Any]:
        return {
            "url": f"http://{self.cfg.api_host}:{self.port}",
            "requests": dict(self.outcomes),
            "per_subscriber": dict(self.per_subscriber),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            **self.upstream.jsonstats(),
        }


async def run_relay(cfg: RelayConfig, stop: asyncio.Event) -> None:
    await serve_until(RelayNode(cfg), stop)
