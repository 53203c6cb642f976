"""Any OpenAI-compatible HTTP server as an engine: vLLM, SGLang, llama.cpp server, Ollama."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import msgspec

from cocoon.core.errors import DECODE_ERRORS, ApiError, ErrorCode
from cocoon.core.usage import Usage
from cocoon.inference import upstream_usage
from cocoon.inference.base import Engine, PromptCounted
from cocoon.inference.upstream_usage import ChunkUsage
from cocoon.openai import sse
from cocoon.openai.schema import Endpoint, OpenAIRequest

log = logging.getLogger(__name__)

_PATHS: dict[Endpoint, str] = {"chat": "/chat/completions", "completions": "/completions"}
_CONNECT_TIMEOUT_S = 10.0
_ERROR_BODY_LIMIT = 64 * 1024
_ERROR_TEXT_LIMIT = 500
_FINISH_WAIT_S = 1.0  # for the last bytes of a stream's body after its [DONE]
_FINISH_LIMIT = 64 * 1024  # of which no more than this is read (an engine sends none)


class OpenAIUpstreamEngine(Engine):
    """Forwards each request to `base_url` (e.g. http://127.0.0.1:8000/v1) as the JSON of exactly the fields it
    was sent with (`OpenAIRequest` keeps unset fields out).

    What the engine says about the request (its 4xx answers) reaches the client; what it says about itself
    (where it runs, 5xx answers, broken connections) stays in this worker's log behind a generic message.
    """

    name = "openai"
    supports_tools = True

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 600,
                 model_hash: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.declare(model_hash)  # its weights are out of this worker's reach: the operator declares them
        self.timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None
        # what this server was found to do (module upstream_usage)
        self._every_chunk = True  # False once it refused `continuous_usage_stats` (a strict schema)
        self._chunk_usage: bool | None = None  # whether its first chunk carries usage (None: not known yet)
        self._counts = True  # False once it answered that it has no upstream_usage.COUNT_PATH
        # streams that ended ([DONE]) while the last bytes of their HTTP body were still on the way (_finish_later)
        self._finishing: dict[aiohttp.ClientResponse, asyncio.Task[None]] = {}

    async def start(self) -> None:
        self._http()

    async def close(self) -> None:
        for task in list(self._finishing.values()):
            task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def models(self) -> list[str]:
        async with self._request("GET", "/models") as resp:
            raw = await resp.read()
        try:
            listing = msgspec.json.decode(raw)
            return [str(model["id"]) for model in listing["data"]]
        except (*DECODE_ERRORS, KeyError, TypeError) as exc:
            raise ApiError(502, f"the engine's model list is not OpenAI-shaped: {_snippet(raw)}",
                           type="api_error", code=ErrorCode.ENGINE_BAD_RESPONSE) from exc

    async def stream(self, req: OpenAIRequest, on_prompt: PromptCounted | None = None) -> AsyncIterator[bytes]:
        # The prompt must be known before the first token is relayed (module upstream_usage says how)
        counted = await self._count_prompt(req) if on_prompt is not None and not self._chunk_usage else None
        body = req.to_body()
        every_chunk = on_prompt is not None and self._every_chunk
        async with contextlib.AsyncExitStack() as stack:
            try:
                resp = await stack.enter_async_context(self._request(
                    "POST", _PATHS[req.endpoint], streaming=True,
                    body=msgspec.json.encode(upstream_usage.asking_every_chunk(body) if every_chunk else body)))
            except ApiError as exc:
                if not (every_chunk and exc.status == 400 and upstream_usage.CONTINUOUS in exc.message):
                    raise
                # a server whose schema refuses the field: it has no per-chunk usage to give
                log.info("the engine refuses per-chunk usage; no longer asked for",
                         extra={"fields": {"engine": self.name}})
                self._every_chunk = every_chunk = False
                resp = await stack.enter_async_context(self._request(
                    "POST", _PATHS[req.endpoint], msgspec.json.encode(body), streaming=True))
            if resp.content_type != "text/event-stream":
                raise ApiError(502, f"the engine answered a streaming request with {resp.content_type}",
                               type="api_error", code=ErrorCode.ENGINE_BAD_RESPONSE)
            usage = ChunkUsage(strip=every_chunk)
            first = True
            decoder = sse.SSEDecoder()
            try:
                async for chunk in resp.content.iter_any():
                    for payload in decoder.feed(chunk):
                        if payload == sse.DONE_PAYLOAD:
                            self._finish_later(resp)
                            if (tail := usage.tail()) is not None:
                                yield tail
                            return
                        if payload.startswith(b'{"error"'):
                            # the headers said 200: an error event is the engine failing midway
                            raise _error_from_body(502, payload)
                        payload = usage.feed(payload)
                        if first and on_prompt is not None:
                            self._chunk_usage = usage.prompt is not None
                            prompt = usage.prompt or (Usage(prompt_tokens=counted) if counted is not None else None)
                            if prompt is not None:
                                on_prompt(prompt)
                        first = False
                        yield payload
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _unavailable("the engine's stream broke off", exc) from exc
            if (tail := usage.tail()) is not None:
                yield tail

    async def _count_prompt(self, req: OpenAIRequest) -> int | None:
        """The prompt's tokens as counted by the server's tokenizer, where it offers that (llama-cpp-python's
        server does), or None. Asked before the generation: that server serves one request at a time."""
        text, ids = upstream_usage.counted_text(req)
        if not text:  # token ids only: counted already
            return ids
        if self._counts is False:
            return None
        url = self.base_url.removesuffix("/v1") + upstream_usage.COUNT_PATH
        try:
            async with self._http().post(
                url, data=msgspec.json.encode({"input": text, "model": req.model}), headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=_CONNECT_TIMEOUT_S),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("cannot count the prompt's tokens", extra={"fields": {"engine_url": url, "error": repr(exc)}})
            return None
        count = upstream_usage.read_count(raw) if status == 200 else None
        if count is None and status in (404, 405):  # not a server that counts: never asked again
            self._counts = False
            log.info("the engine does not count prompts", extra={"fields": {"engine": self.name, "status": status}})
        elif count is None:
            log.warning("the engine's prompt count is unreadable", extra={"fields": {"status": status}})
        return count + ids if count is not None else None

    async def complete(self, req: OpenAIRequest) -> bytes:
        async with self._request("POST", _PATHS[req.endpoint], msgspec.json.encode(req)) as resp:
            try:
                return await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _unavailable("the engine's answer broke off", exc) from exc

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # no pool cap: the worker's max_active_requests is what bounds concurrency
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    @asynccontextmanager
    async def _request(self, method: str, path: str, body: bytes | None = None, *,
                       streaming: bool = False) -> AsyncIterator[aiohttp.ClientResponse]:
        # a stream may legitimately last longer than any total limit; only silence is suspicious
        timeout = (aiohttp.ClientTimeout(sock_connect=_CONNECT_TIMEOUT_S, sock_read=self.timeout_s)
                   if streaming else aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=_CONNECT_TIMEOUT_S))
        url = self.base_url + path
        try:
            resp = await self._http().request(
                method, url, data=body, headers=self._headers, timeout=timeout,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unavailable("cannot reach the engine", exc, url) from exc
        try:
            if resp.status >= 400:
                raise _error_from_body(resp.status, await resp.content.read(_ERROR_BODY_LIMIT))
            yield resp
        finally:
            # close() rather than release(): when the caller stops early the upstream must see the
            # connection drop and stop generating; a fully read answer keeps its pooled connection
            if resp.content.at_eof():
                resp.release()
            elif resp not in self._finishing:
                resp.close()

    def _finish_later(self, resp: aiohttp.ClientResponse) -> None:
        """The stream said [DONE], but the end of its chunked body may not have arrived yet: closing the response
        now would drop the connection (and the next request would open a new one: a connect and a handshake with
        the engine, a millisecond at concurrency 1). Its last bytes are read in the background instead, and the
        connection goes back to the pool; an engine that sends more, or nothing within a second, loses it."""
        if resp.content.at_eof() or resp in self._finishing:
            return
        task = asyncio.ensure_future(self._read_to_end(resp))
        self._finishing[resp] = task
        task.add_done_callback(lambda _: self._finishing.pop(resp, None))

    @staticmethod
    async def _read_to_end(resp: aiohttp.ClientResponse) -> None:
        try:
            async with asyncio.timeout(_FINISH_WAIT_S):
                left = _FINISH_LIMIT
                while left > 0 and not resp.content.at_eof():
                    data = await resp.content.read(left)
                    if not data:
                        break
                    left -= len(data)
        except (aiohttp.ClientError, TimeoutError):
            pass
        finally:
            if resp.content.at_eof():
                resp.release()
            else:
                resp.close()


def _unavailable(what: str, exc: BaseException, url: str = "") -> ApiError:
    # the URL and the exception name where the engine runs: the operator's to read, not the client's
    log.warning(what, extra={"fields": {"engine_url": url, "error": repr(exc)}})
    return ApiError(502, f"{what}; see the worker's log", type="api_error", code=ErrorCode.ENGINE_UNAVAILABLE)


def _error_from_body(status: int, raw: bytes) -> ApiError:
    """The engine's own error, from OpenAI's `{"error": {...}}`, its variants, or plain text.

    A 4xx is about the request, so its message and fields reach the client. A failure of the engine itself may
    describe its internals (or quote the prompt), so the client gets a generic message, and the operator finds
    the engine's own words in the engine's log.
    """
    try:
        doc = msgspec.json.decode(raw)
    except DECODE_ERRORS:
        doc = None
    fields: dict[str, Any] = {}
    if isinstance(doc, dict):
        error = doc.get("error")
        if isinstance(error, dict):
            fields = error
        elif isinstance(error, str):  # llama.cpp and Ollama variants
            fields = {"message": error}
        elif isinstance(doc.get("message"), str):  # older vLLM: the error fields at top level
            fields = doc
    message = fields.get("message")
    if not isinstance(message, str) or not message:
        message = _snippet(raw) or f"the engine answered HTTP {status}"
    if status >= 500:
        log.warning("the engine failed", extra={"fields": {
            "status": status, "type": _text(fields.get("type")), "code": _text(fields.get("code"))}})
        return ApiError(status, f"the engine failed (HTTP {status}); see the engine's log", type="api_error",
                        code=ErrorCode.ENGINE_ERROR)
    text = _text(fields.get("code"))
    code = ErrorCode.known(text) if text is not None else None
    if text is not None and code is None:
        # a code of the engine's own vocabulary: the answer's codes are ours, the engine's stays in the message
        message, code = f"{message} (engine code: {text})", ErrorCode.ENGINE_ERROR
    return ApiError(
        status,
        message,
        type=_text(fields.get("type")) or "invalid_request_error",
        code=code,
        param=_text(fields.get("param")),
    )


def _text(value: object) -> str | None:
    """Engines disagree on field types (vLLM sends a numeric `code`); keep only real strings."""
    return value if isinstance(value, str) and value else None


def _snippet(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return text if len(text) <= _ERROR_TEXT_LIMIT else text[:_ERROR_TEXT_LIMIT] + "…"
