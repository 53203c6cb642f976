"""Any OpenAI-compatible HTTP server as an engine: vLLM, SGLang, llama.cpp server, Ollama."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import msgspec

from cocoon.core.errors import ApiError, ErrorCode
from cocoon.inference.base import Endpoint, Engine

_PATHS: dict[Endpoint, str] = {"chat": "/chat/completions", "completions": "/completions"}
_CONNECT_TIMEOUT_S = 10.0
_ERROR_BODY_LIMIT = 64 * 1024
_ERROR_TEXT_LIMIT = 500


class SSEDecoder:
    """Turns a byte stream into the `data` of each server-sent event, however the stream was chunked.

    Lines end with LF or CRLF (every OpenAI-compatible server uses one of them); fields other than `data`
    and comment lines carry nothing an OpenAI stream needs.
    """

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # the unfinished last line, kept in pieces to stay linear
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        self._partial.append(chunk)
        if b"\n" not in chunk:
            return []
        *lines, rest = b"".join(self._partial).split(b"\n")
        self._partial = [rest] if rest else []
        events = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return events


class OpenAIUpstreamEngine(Engine):
    """Forwards request bodies unchanged to `base_url` (e.g. http://127.0.0.1:8000/v1)."""

    name = "openai"
    supports_tools = True

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 600) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._http()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def models(self) -> list[str]:
        async with self._request("GET", "/models") as resp:
            raw = await resp.read()
        try:
            listing = msgspec.json.decode(raw)
            return [str(model["id"]) for model in listing["data"]]
        except (msgspec.DecodeError, KeyError, TypeError) as exc:
            raise ApiError(502, f"the engine's model list is not OpenAI-shaped: {_snippet(raw)}",
                           type="api_error", code=ErrorCode.ENGINE_BAD_RESPONSE) from exc

    async def stream(self, endpoint: Endpoint, body: dict[str, Any]) -> AsyncIterator[bytes]:
        async with self._request("POST", _PATHS[endpoint], body, streaming=True) as resp:
            if resp.content_type != "text/event-stream":
                raise ApiError(502, f"the engine answered a streaming request with {resp.content_type}",
                               type="api_error", code=ErrorCode.ENGINE_BAD_RESPONSE)
            decoder = SSEDecoder()
            try:
                async for chunk in resp.content.iter_any():
                    for payload in decoder.feed(chunk):
                        if payload == b"[DONE]":
                            return
                        if payload.startswith(b'{"error"'):
                            raise _error_from_body(502, payload)
                        yield payload
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _unavailable(f"the engine's stream broke off: {exc!r}") from exc

    async def complete(self, endpoint: Endpoint, body: dict[str, Any]) -> bytes:
        async with self._request("POST", _PATHS[endpoint], body) as resp:
            try:
                return await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _unavailable(f"the engine's answer broke off: {exc!r}") from exc

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # no pool cap: the worker's max_active_requests is what bounds concurrency
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    @asynccontextmanager
    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                       streaming: bool = False) -> AsyncIterator[aiohttp.ClientResponse]:
        # a stream may legitimately last longer than any total limit; only silence is suspicious
        timeout = (aiohttp.ClientTimeout(sock_connect=_CONNECT_TIMEOUT_S, sock_read=self.timeout_s)
                   if streaming else aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=_CONNECT_TIMEOUT_S))
        url = self.base_url + path
        try:
            resp = await self._http().request(
                method, url, data=None if body is None else msgspec.json.encode(body), headers=self._headers,
                timeout=timeout,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unavailable(f"cannot reach the engine at {url}: {exc!r}") from exc
        try:
            if resp.status >= 400:
                raise _error_from_body(resp.status, await resp.content.read(_ERROR_BODY_LIMIT))
            yield resp
        finally:
            # close() rather than release(): when the caller stops early the upstream must see the
            # connection drop and stop generating; a fully read answer keeps its pooled connection
            if resp.content.at_eof():
                resp.release()
            else:
                resp.close()


def _unavailable(message: str) -> ApiError:
    return ApiError(502, message, type="api_error", code=ErrorCode.ENGINE_UNAVAILABLE)


def _error_from_body(status: int, raw: bytes) -> ApiError:
    """The engine's own error, from OpenAI's `{"error": {...}}`, its variants, or plain text."""
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError:
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
    default_type = "invalid_request_error" if status < 500 else "api_error"
    text = _text(fields.get("code"))
    code = ErrorCode.known(text) if text is not None else None
    if text is not None and code is None:
        # a code of the engine's own vocabulary: the answer's codes are ours, the engine's stays in the message
        message, code = f"{message} (engine code: {text})", ErrorCode.ENGINE_ERROR
    return ApiError(
        status,
        message,
        type=_text(fields.get("type")) or default_type,
        code=code,
        param=_text(fields.get("param")),
    )


def _text(value: object) -> str | None:
    """Engines disagree on field types (vLLM sends a numeric `code`); keep only real strings."""
    return value if isinstance(value, str) and value else None


def _snippet(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return text if len(text) <= _ERROR_TEXT_LIMIT else text[:_ERROR_TEXT_LIMIT] + "…"
