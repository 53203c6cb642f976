"""The OpenAI-compatible HTTP API that app backends call (the openai SDK, curl)."""

from __future__ import annotations

import hmac
import logging
import time
from collections import deque
from typing import Any

import msgspec
from aiohttp import web

from cocoon.client.crosssite import CrossSiteGuard
from cocoon.client.media import MediaApi
from cocoon.client.oblivious import RelayCall, RelayLink, RelayStream
from cocoon.client.payments import ClientPayments
from cocoon.client.proxy_link import ProxyLink
from cocoon.client.receipts import RECEIPT_HEADER, Answering, AnswerSeen, FileSeen, check_receipt
from cocoon.client.sealing import RequestSealer, SealedCall
from cocoon.config import ClientConfig
from cocoon.core.errors import DECODE_ERRORS, ApiError, ErrorCode
from cocoon.core.ids import REQUEST_ID_HEADER, request_id_from, request_scope
from cocoon.core.usage import KINDS, Usage
from cocoon.ledger.receipts import Receipt, ReceiptError
from cocoon.observe.series import Series
from cocoon.openai import http, schema, sse
from cocoon.seal import SealError
from cocoon.wire.connection import Call, LinkLost
from cocoon.wire.messages import (
    Answer,
    Request,
    ResponseChunk,
    ResponseEnd,
    ResponseError,
    ResponseHead,
)

log = logging.getLogger(__name__)

AnyCall = Call | RelayCall | RelayStream | SealedCall  # a request's answers, however they travel

REGION_HEADER = "cocoon-region"
_REQUEST_ID = web.RequestKey("request_id", str)


MAX_MODELS_SHOWN = 16  # per-model latency is kept for this many models; later ones count as "other"


class ClientStats:
    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.usage = dict.fromkeys(KINDS, 0)
        self.charged_nanoton = 0
        self.media_ms = 0  # input media processed (the media workload), as charged
        self.active = 0
        # for the dashboards: requests, errors and latency over the last minutes, per-model latency, and the
        # last errors (time and code only: never a message, which may quote the request)
        self.series = Series()
        self.models: dict[str, Series] = {}
        self.recent_errors: deque[dict[str, Any]] = deque(maxlen=20)
        self.receipts = {"held": 0, "missing": 0, "refused": 0}  # answers' receipts: checked, absent, failing

    def answered(self, model: str, seconds: float, first_token_s: float | None) -> None:
        """A request a worker answered (its model is served): how long it took, and its first token."""
        self.series.sample("latency_ms", seconds * 1000)
        if first_token_s is not None:
            self.series.sample("ttft_ms", first_token_s * 1000)
        if model not in self.models and len(self.models) >= MAX_MODELS_SHOWN:
            model = "other"
        series = self.models.get(model)
        if series is None:  # made once per model: a Series seeds its own random generator
            series = self.models[model] = Series(bucket_s=10.0, length=30)
        series.sample("latency_ms", seconds * 1000)

    def per_model(self) -> dict[str, Any]:
        return {model: series.recent("latency_ms", 300.0) for model, series in self.models.items()}

    def record(self, outcome: str, last: ResponseEnd | ResponseError | None = None) -> None:
        """Count an outcome, and what its last message says was charged (a broken stream is charged too)."""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.series.count("requests")
        if outcome != "ok":
            self.series.count("errors")
            self.recent_errors.append({"at": round(time.time(), 3), "code": outcome})
        u: Usage | None = last.usage if last is not None else None
        if last is None or u is None:
            return
        for kind, n in u.by_kind():
            self.usage[kind] += n
        self.media_ms += u.media_ms
        self.charged_nanoton += last.cost_nanoton


class ClientApi:
    def __init__(self, cfg: ClientConfig, link: ProxyLink | RelayLink, payments: ClientPayments | None = None,
                 sealer: RequestSealer | None = None) -> None:
        self.cfg = cfg
        self.link = link
        self.sealer = sealer  # seals every request (cocoon/seal); None: in the clear to the proxy (debugging only)
        self.stats = ClientStats()
        self.payments = payments
        self.guard = CrossSiteGuard(cfg.api_host, check_host=cfg.api_key is None)

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.max_body_bytes, middlewares=[
            self._request_ids, http.error_middleware(self.cfg.max_body_bytes), self._admit])
        app.on_response_prepare.append(_answer_request_id)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        media = MediaApi(self)
        app.router.add_post("/v1/media/transcode", media.transcode)
        app.router.add_get("/v1/media/formats", media.formats)
        return app

    def request_id(self, request: web.Request) -> str:
        return request[_REQUEST_ID]

    def region(self, request: web.Request) -> str:
        return requested_region(request)

    # -- plumbing ----------------------------------------------------------------------------------------------
    @web.middleware
    async def _request_ids(self, request: web.Request, handler: http.Handler) -> web.StreamResponse:
        """Names the request: the caller's `x-request-id` when well-formed, a new id otherwise. It is answered as
        the `x-request-id` header, sent on to the proxy and the worker, and logged on every line about it."""
        request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        request[_REQUEST_ID] = request_id
        started = time.monotonic()
        status: int | None = None  # None: the caller went away first
        with request_scope(request_id):
            try:
                resp = await handler(request)
                status = resp.status
                return resp
            finally:
                log.info("request done", extra={"fields": {
                    "path": request.path, "status": status, "ms": round((time.monotonic() - started) * 1000, 1)}})

    @web.middleware
    async def _admit(self, request: web.Request, handler: http.Handler) -> web.StreamResponse:
        self.guard.check(request)
        if self.cfg.api_key is not None:
            self._authorize(request)
        return await handler(request)

    def _authorize(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        expected = self.cfg.api_key or ""
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise ApiError(401, "missing or invalid API key: send `Authorization: Bearer <key>`",
                           type="authentication_error", code=ErrorCode.INVALID_API_KEY)

    async def _body(self, request: web.Request) -> bytes:
        return await http.read_body(request, self.cfg.max_body_bytes)

    # -- endpoints ---------------------------------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        reply = await self.link.models()
        data = [{"id": m.id, "object": "model", "created": 0, "owned_by": "cocoon", "workers": m.workers,
                 "free_slots": m.free_slots} for m in reply.models]
        return web.json_response({"object": "list", "data": data})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        parsed = schema.parse_chat_request(await self._body(request), max_tokens_limit=self.cfg.max_tokens_limit,
                                           max_prompt_chars=self.cfg.max_prompt_chars)
        return await self._forward(request, "chat", parsed)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        parsed = schema.parse_completion_request(await self._body(request),
                                                 max_tokens_limit=self.cfg.max_tokens_limit,
                                                 max_prompt_chars=self.cfg.max_prompt_chars)
        return await self._forward(request, "completions", parsed)

    async def _forward(self, request: web.Request, endpoint: str, parsed: Any) -> web.StreamResponse:
        started = time.monotonic()
        req = wire_request(endpoint, parsed, self.cfg, request[_REQUEST_ID], requested_region(request))
        # before the request leaves: from then on its charge may be in any voucher the proxy signs
        ticket = self.payments.begin(req.request_id) if self.payments is not None else 0
        try:
            return await self._answer(request, req, parsed.model, ticket, started)
        finally:
            if self.payments is not None:  # no-op when its end was seen; else the proxy may have charged it unseen
                self.payments.end(ticket, None)

    async def _answer(self, request: web.Request, req: Request, model: str, ticket: int, started: float
                      ) -> web.StreamResponse:
        try:
            call, proxy_key = await (self.sealer.request(req) if self.sealer is not None else self.link.request(req))
        except ApiError:
            if self.payments is not None:  # it never reached a proxy: nothing can be charged for it
                self.payments.unsent(ticket)
            raise
        self.stats.active += 1
        headed_at: float | None = None
        try:
            first = await self.next_answer(call)
            if isinstance(first, ResponseError):
                self.paid(ticket, ErrorCode.label(first.code), first)
                raise first.to_api()
            if not isinstance(first, ResponseHead):
                raise ApiError(502, f"proxy sent {type(first).__name__} before the answer head",
                               code=ErrorCode.UPSTREAM_ERROR)
            headed_at = time.monotonic()
            timing = {"x-cocoon-client-ms": f"{(headed_at - started) * 1000:.1f}",
                      "x-cocoon-proxy-ms": f"{first.proxy_ms:.1f}",
                      "x-cocoon-worker-ms": f"{first.worker_ms:.1f}"}
            answering = Answering(req, ticket, proxy_key, call.worker_key if isinstance(call, SealedCall) else b"",
                                   isinstance(call, SealedCall) and call.deterministic)
            if req.stream:
                return await self._stream(request, call, answering, timing)
            return await self._whole(call, answering, timing)
        except SealError:
            self.disown(ticket)
            raise
        finally:
            self.stats.active -= 1
            if headed_at is not None:
                self.stats.answered(model, time.monotonic() - started,
                                    headed_at - started if req.stream else None)
            if not call.done:
                # Our HTTP client went away (or we failed) mid-answer: stop the generation on the worker.
                call.cancel("API client disconnected")
                self.stats.record("cancelled")

    def disown(self, ticket: int) -> None:
        """A sealed answer that did not open (changed, reordered, cut short on the way): never accepted as charged,
        so a voucher charging for it is unexplained (the client's audit counts it)."""
        self.stats.record(ErrorCode.SEALED_ANSWER_INVALID)
        if self.payments is not None:
            self.payments.disown(ticket)

    async def next_answer(self, call: AnyCall) -> Answer:
        """The proxy's next answer; ApiError (502) if our link to it broke meanwhile."""
        try:
            return await call.next(self.cfg.request_timeout_s)
        except LinkLost as lost:
            self.stats.record(ErrorCode.PROXY_LINK_LOST)
            raise ApiError(502, f"the connection to the proxy broke while this request was in flight ({lost}); "
                                "it was not retried, since the proxy may have started it", type="api_error",
                           code=ErrorCode.PROXY_LINK_LOST, retry_after=1) from None

    async def _whole(self, call: AnyCall, answering: Answering, timing: dict[str, str]
                     ) -> web.Response:
        parts: list[bytes] = []
        while True:
            msg = await self.next_answer(call)
            if isinstance(msg, ResponseChunk):
                parts.append(msg.data)
            elif isinstance(msg, ResponseEnd):
                answer = b"".join(parts)
                seen = AnswerSeen(answering.deterministic)
                seen.update(answer)
                receipt = self.checked_receipt(answering, msg, seen)
                self.paid(answering.ticket, "ok", msg, receipt)
                body = with_cost(answer, msg.cost_nanoton)
                headers = {**timing, RECEIPT_HEADER: receipt.to_base64()} if receipt is not None else timing
                return web.Response(body=body, content_type="application/json", headers=headers)
            elif isinstance(msg, ResponseError):
                self.paid(answering.ticket, ErrorCode.label(msg.code), msg)
                raise msg.to_api()

    async def _stream(self, request: web.Request, call: AnyCall, answering: Answering,
                      timing: dict[str, str]) -> web.StreamResponse:
        resp = await http.open_stream(request, timing)
        # a usage chunk is held back until the next message: if it is the End, the chunk carries the answer's cost
        # and receipt; otherwise it goes out as it came (payloads keep their order: the receipt hashes them so)
        usage_chunk: bytes | None = None
        answer = AnswerSeen(answering.deterministic)
        ticket = answering.ticket
        # Events already received are sent in one write (one chunk, one send), not one write each; nothing waits
        # for more: the batch goes out as soon as the next answer is not already here.
        batch: list[bytes] = []
        while True:
            if batch and not call.ready():
                await resp.write(b"".join(batch))
                batch.clear()
            try:
                msg = await self.next_answer(call)
            except ApiError as exc:  # headers are gone already: the error is the stream's last event
                if isinstance(exc, SealError):  # nothing more of this answer is believed
                    self.disown(ticket)
                batch.append(sse.event(exc.to_json()))
                break
            if isinstance(msg, ResponseChunk):
                answer.update(msg.data, has_usage=msg.has_usage)
                if usage_chunk is not None:
                    batch.append(sse.event(usage_chunk))
                    usage_chunk = None
                if msg.has_usage:
                    usage_chunk = msg.data
                else:
                    batch.append(sse.event(msg.data))
            elif isinstance(msg, ResponseEnd):
                receipt = self.checked_receipt(answering, msg, answer)
                self.paid(ticket, "ok", msg, receipt)
                if usage_chunk is not None:
                    batch.append(sse.event(with_cost(usage_chunk, msg.cost_nanoton, receipt)))
                batch.append(sse.DONE)
                break
            elif isinstance(msg, ResponseError):
                # Headers are gone already: the error travels as a final SSE event, the way OpenAI does.
                self.paid(ticket, ErrorCode.label(msg.code), msg)
                batch.append(sse.event(msg.to_api().to_json()))
                break
        await resp.write_eof(b"".join(batch))
        return resp

    def checked_receipt(self, answering: Answering, end: ResponseEnd, seen: AnswerSeen | FileSeen) -> Receipt | None:
        """The answer's receipt if it holds (client/receipts.py); None, counted and logged, when absent or not."""
        try:
            receipt = check_receipt(end, req=answering.req, answer_hash=seen.answer_hash(),
                                    proxy_key=answering.proxy_key, worker_key=answering.worker_key,
                                    content_digest=seen.content_digest(), request_hash=answering.request_hash)
        except ReceiptError as exc:
            missing = end.receipt is None
            self.stats.receipts["missing" if missing else "refused"] += 1
            log.log(logging.INFO if missing else logging.ERROR, "answer without a valid receipt",
                    extra={"fields": {"reason": str(exc)}})
            return None
        self.stats.receipts["held"] += 1
        return receipt

    def paid(self, ticket: int, outcome: str, last: ResponseEnd | ResponseError, receipt: Receipt | None = None
              ) -> None:
        """The proxy's last message about a request: count it, and hand its charge (and receipt) to the payments."""
        self.stats.record(outcome, last)
        if self.payments is not None:
            self.payments.end(ticket, last, receipt, checked=True)


def wire_request(endpoint: str, parsed: Any, cfg: ClientConfig, request_id: str, region: str = "") -> Request:
    """The wire `Request` for a parsed OpenAI request (`openai/schema.py`): what a proxy (or, encapsulated, a
    relay's gateway) is sent. The SDK builds its requests here too."""
    return Request(
        endpoint=endpoint, model=parsed.model, body=schema.forwarded_body(parsed),
        stream=parsed.stream, include_usage=parsed.include_usage,
        deadline=time.time() + cfg.request_timeout_s, request_id=request_id,
        max_coefficient=cfg.default_max_coefficient, features=parsed.engine_features(),
        region=region, max_tokens=parsed.max_tokens, choices=parsed.choices()[0],
    )


def with_cost(payload: bytes, cost_nanoton: int, receipt: Receipt | None = None) -> bytes:
    """The answer's JSON with `usage.cost_nanoton` (what the client paid for it) added, so an app can bill its own
    users, and `usage.receipt` (base64) when it has one; a payload without a usage object is returned as is."""
    try:
        answer = msgspec.json.decode(payload)
    except DECODE_ERRORS:
        return payload
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if not isinstance(usage, dict):
        return payload
    usage["cost_nanoton"] = cost_nanoton
    if receipt is not None:
        usage["receipt"] = receipt.to_base64()
    return msgspec.json.encode(answer)


async def _answer_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer, errors and streams included, names its request."""
    request_id = request.get(_REQUEST_ID)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


def requested_region(request: web.Request) -> str:
    """The `cocoon-region` header: only workers announcing this region may answer."""
    region = request.headers.get(REGION_HEADER, "").strip()
    if len(region) > 64 or not region.isprintable():
        raise ApiError(400, f"the `{REGION_HEADER}` header must be a printable region name of at most 64 characters",
                       code=ErrorCode.INVALID_REGION, param=REGION_HEADER)
    return region
