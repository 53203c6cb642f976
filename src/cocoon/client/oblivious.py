"""The requester's side of Oblivious HTTP: each request encapsulated to the proxy's gateway and sent through a
relay (`cocoon client --via-relay URL`, the SDK). `RelayLink` answers like `ProxyLink`: `call(req)` gives the
proxy's answers to the wire `Request` the client API built, in order.

Before anything is encapsulated the gateway's key configuration is fetched from the relay with the proxy's
RA-TLS certificate and signature (`wire/oblivious.py` `SignedKeys`) and checked with this client's verifier:
the proxy's attestation against its policy. A relay that substitutes keys, or a proxy the policy refuses, gets
nothing. A request refused for an unknown key id (the gateway rotated) is sent again once with fresh keys: it
was never opened, so it cannot have been served or charged.

A streamed request travels chunked (`message/ohttp-chunked-req`): its answers arrive as the worker produces them,
each opened as its chunk completes (`RelayStream`); a relay that changes, drops, reorders or cuts off a chunk is
caught by the chunk's AEAD (the counter and the final marker are bound in).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import aiohttp
import msgspec

from cocoon.attest.types import AttestationError
from cocoon.core.errors import DECODE_ERRORS, ApiError, ErrorCode
from cocoon.ohttp.encap import (
    CHUNKED_REQUEST_MEDIA_TYPE,
    CHUNKED_RESPONSE_MEDIA_TYPE,
    REQUEST_MEDIA_TYPE,
    RESPONSE_MEDIA_TYPE,
    ChunkOpener,
    OhttpError,
    encapsulate_request,
)
from cocoon.ohttp.keys import KeyConfig
from cocoon.ratls.cert import CertVerifier
from cocoon.wire import frames, oblivious
from cocoon.wire.messages import Message, ModelsQuery, ModelsReply, Request, ResponseEnd, ResponseError

KEYS_PATH = "/ohttp-keys"  # application/ohttp-keys (RFC 9458 §3.2), for any OHTTP client
SIGNED_KEYS_PATH = "/ohttp-keys/signed"  # the same keys with the proxy's certificate and signature
GATEWAY_PATH = "/ohttp"  # message/ohttp-req in, message/ohttp-res out
SIGNED_KEYS_MEDIA_TYPE = "application/vnd.cocoon.signed-ohttp-keys"
KEYS_HEADER = "cocoon-ohttp-keys"  # on a 422 `ohttp_unknown_key`: the current application/ohttp-keys, hex
KEYS_FRESH_S = 300.0  # keys are fetched again after this long (the gateway rotates, with an overlap)
_FINAL = (ResponseEnd, ResponseError, ModelsReply)


class RelayCall:
    """The answers to one request that came back through the relay (whole: an encapsulated response is one
    message), read like a link's `Call`."""

    __slots__ = ("answers", "call_id", "done")

    def __init__(self, answers: list[Message]) -> None:
        self.answers = deque(answers)
        self.call_id = 0
        self.done = False

    async def next(self, timeout: float | None = None) -> Message:
        if not self.answers:
            self.done = True
            raise ApiError(502, "the gateway's answer ended before its last message", code=ErrorCode.UPSTREAM_ERROR)
        msg = self.answers.popleft()
        if isinstance(msg, _FINAL):
            self.done = True
        return msg

    def ready(self) -> bool:
        return bool(self.answers)

    def cancel(self, reason: str = "") -> None:
        self.done = True  # the relay's HTTP request is over already: nothing runs any more


class RelayStream:
    """The answers to one streamed request, read from the relay's chunked response as they arrive, like a link's
    `Call`."""

    def __init__(self, response: aiohttp.ClientResponse, opener: ChunkOpener) -> None:
        self._response = response
        self._opener = opener
        self._frames = frames.FrameReader()
        self._ready: deque[Message] = deque()
        self.call_id = 0
        self.done = False

    async def next(self, timeout: float | None = None) -> Message:
        while not self._ready:
            if self.done:
                raise ApiError(502, "the gateway's answer ended before its last message", code=ErrorCode.UPSTREAM_ERROR)
            await self._read(timeout)
        msg = self._ready.popleft()
        if isinstance(msg, _FINAL):
            self.cancel()
        return msg

    async def _read(self, timeout: float | None) -> None:
        try:
            data = await asyncio.wait_for(self._response.content.readany(), timeout)
            plain = self._opener.feed(data) if data else [self._opener.close()]
            for chunk in plain:
                self._ready.extend(self._frames.feed(chunk))
        except OhttpError as exc:
            self.cancel()
            raise ApiError(502, f"the answer that came back through the relay is not the gateway's: {exc}",
                           type="api_error", code=ErrorCode.OHTTP_DECRYPT_FAILED) from None
        except (aiohttp.ClientError, TimeoutError, frames.FrameError) as exc:
            self.cancel()
            raise ApiError(502, f"the answer through the relay broke off: {type(exc).__name__} {exc}",
                           type="api_error", code=ErrorCode.UPSTREAM_ERROR) from None
        if self._opener.finished:
            self.done = not self._ready

    def ready(self) -> bool:
        return bool(self._ready)

    def cancel(self, reason: str = "") -> None:
        """Stop reading: closing the relay's response makes it cancel the request at the proxy."""
        self.done = True
        self._response.close()


class RelayLink:
    def __init__(self, relay_url: str, verifier: CertVerifier, *, timeout_s: float = 600.0,
                 subscriber_token: str | None = None) -> None:
        self.relay_url = relay_url.rstrip("/")
        self.verifier = verifier
        self.timeout_s = timeout_s
        self.headers = {"Authorization": f"Bearer {subscriber_token}"} if subscriber_token else {}
        self._session: aiohttp.ClientSession | None = None
        self._keys: tuple[KeyConfig, float] | None = None
        self._lock = asyncio.Lock()
        self.requests = 0

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                                  headers=self.headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def key_config(self, *, fresh: bool = False) -> KeyConfig:
        """The gateway's current key configuration, verified (the proxy's attestation and signature)."""
        async with self._lock:
            if self._keys is not None and not fresh and time.monotonic() - self._keys[1] < KEYS_FRESH_S:
                return self._keys[0]
            status, body, _ = await self._send("GET", SIGNED_KEYS_PATH)
            if status != 200:
                raise _relay_error(status, body, "the relay did not hand out the gateway's keys")
            try:
                config = oblivious.SignedKeys.decode(body).verify(self.verifier)
            except AttestationError as exc:
                raise ApiError(502, f"the gateway's keys were refused: {exc}", type="api_error",
                               code=ErrorCode.UPSTREAM_ERROR) from None
            self._keys = (config, time.monotonic())
            return config

    async def _open(self, method: str, path: str, body: bytes | None = None,
                    content_type: str = REQUEST_MEDIA_TYPE) -> aiohttp.ClientResponse:
        headers = {"Content-Type": content_type} if body is not None else None
        try:
            return await self._http().request(method, self.relay_url + path, data=body, headers=headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(503, f"the relay at {self.relay_url} did not answer: {type(exc).__name__} {exc}",
                           type="service_unavailable", code=ErrorCode.PROXY_UNAVAILABLE, retry_after=2) from None

    async def _send(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes, str]:
        resp = await self._open(method, path, body)
        async with resp:
            try:
                return resp.status, await resp.read(), resp.headers.get("Content-Type", "")
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ApiError(503, f"the relay at {self.relay_url} broke off: {type(exc).__name__} {exc}",
                               type="service_unavailable", code=ErrorCode.PROXY_UNAVAILABLE, retry_after=2) from None

    async def _exchange(self, inner: bytes, *, chunked: bool = False) -> list[Message] | RelayStream:
        """Encapsulate `inner`, send it through the relay, open the answer (as it arrives when `chunked`)."""
        for attempt in range(2):
            config = await self.key_config(fresh=attempt > 0)
            enc_request, keys = encapsulate_request(config, inner, chunked=chunked)
            self.requests += 1
            resp = await self._open("POST", GATEWAY_PATH, enc_request,
                                    CHUNKED_REQUEST_MEDIA_TYPE if chunked else REQUEST_MEDIA_TYPE)
            content_type = resp.headers.get("Content-Type", "")
            if chunked and resp.status == 200 and content_type.startswith(CHUNKED_RESPONSE_MEDIA_TYPE):
                return RelayStream(resp, keys.chunk_opener())
            async with resp:
                try:
                    status, body = resp.status, await resp.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise ApiError(502, f"the answer through the relay broke off: {type(exc).__name__} {exc}",
                                   type="api_error", code=ErrorCode.UPSTREAM_ERROR) from None
            if status == 200 and content_type.startswith(RESPONSE_MEDIA_TYPE):
                try:
                    return oblivious.read_answers(keys.open_response(body))
                except OhttpError as exc:
                    raise ApiError(502, f"the answer that came back through the relay is not the gateway's: {exc}",
                                   type="api_error", code=ErrorCode.OHTTP_DECRYPT_FAILED) from None
            error = _relay_error(status, body, "the relay refused the request")
            if error.code is not ErrorCode.OHTTP_UNKNOWN_KEY or attempt:
                raise error
        raise AssertionError("unreachable")

    async def call(self, req: Request) -> RelayCall | RelayStream:
        """The answers to `req`: streamed requests chunked, as they come; others whole."""
        answers = await self._exchange(oblivious.inner_request(req), chunked=req.stream)
        return answers if isinstance(answers, RelayStream) else RelayCall(answers)

    async def request(self, req: Request) -> tuple[RelayCall | RelayStream, bytes]:
        """As `ProxyLink.request`; no voucher key: through a relay, the relay pays, and an answer's receipt is
        checked for its signatures and hashes, not for whose voucher key countersigned it."""
        return await self.call(req), b""

    async def models(self, seal_for: str = "") -> ModelsReply:
        """The models the gateway's proxy serves, as a link's models query asks (with `seal_for`, also the
        certificates of workers serving that model, to seal a request to)."""
        answers = await self._exchange(oblivious.inner_models(ModelsQuery(call_id=0, seal_for=seal_for)))
        assert isinstance(answers, list)
        reply = answers[0]
        if isinstance(reply, ResponseError):
            raise reply.to_api()
        if not isinstance(reply, ModelsReply):
            raise ApiError(502, "the gateway answered the model list with something else",
                           code=ErrorCode.UPSTREAM_ERROR)
        return reply


def _relay_error(status: int, body: bytes, what: str) -> ApiError:
    """The relay's (or through it, the gateway's) error answer as an ApiError, its code kept when it is ours."""
    try:
        err = msgspec.json.decode(body).get("error") or {}
        message, code = str(err.get("message") or ""), ErrorCode.known(str(err.get("code") or ""))
    except (*DECODE_ERRORS, AttributeError):
        message, code = "", None
    return ApiError(status if 400 <= status <= 599 else 502, f"{what} ({status}): {message or body[:200]!r}",
                    type="api_error" if status >= 500 else "invalid_request_error",
                    code=code or ErrorCode.UPSTREAM_ERROR)
