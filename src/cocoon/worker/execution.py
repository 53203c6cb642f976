"""Running one routed request on the engine and streaming its answer back over the proxy link."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from cocoon.core.errors import ApiError, ErrorCode
from cocoon.core.usage import Usage
from cocoon.inference.base import Endpoint, Engine
from cocoon.wire.messages import Message, Request, ResponseChunk, ResponseEnd, ResponseError, ResponseHead
from cocoon.worker.metering import MeteringError, read_answer, usage_chunk

log = logging.getLogger(__name__)

Send = Callable[[Message], Awaitable[None]]


class Execution:
    """One request's run; `usage` is what the engine reported, the basis of billing."""

    def __init__(self, engine: Engine, req: Request, send: Send) -> None:
        self.engine = engine
        self.req = req
        self.send = send
        self.started = time.monotonic()
        self.usage: Usage | None = None
        self._head_sent = False

    def _ms(self) -> float:
        return (time.monotonic() - self.started) * 1000

    async def _head(self) -> None:
        if not self._head_sent:
            self._head_sent = True
            await self.send(ResponseHead(call_id=self.req.call_id, status=200, worker_ms=self._ms()))

    async def run(self) -> None:
        try:
            body = self._engine_body()
            endpoint: Endpoint = "chat" if self.req.endpoint == "chat" else "completions"
            if self.req.stream:
                await self._stream(endpoint, body)
            else:
                await self._complete(endpoint, body)
        except ApiError as exc:
            await self.send(ResponseError.from_api(exc, self.req.call_id))
            return
        except MeteringError as exc:
            await self.send(ResponseError(call_id=self.req.call_id, status=502, message=str(exc),
                                          code=ErrorCode.ENGINE_ERROR))
            return
        await self.send(ResponseEnd(call_id=self.req.call_id, usage=self.usage or Usage(), worker_ms=self._ms()))

    def _engine_body(self) -> dict[str, Any]:
        # `features` lists the tool-calling and structured-output fields the request uses (openai/schema.py).
        if self.req.features and not self.engine.supports_tools:
            feature = self.req.features[0]
            raise ApiError(400, f"the `{self.engine.name}` engine serving `{self.req.model}` does not support "
                                f"`{feature}`", code=ErrorCode.UNSUPPORTED_PARAMETER, param=feature)
        body: dict[str, Any] = msgspec.json.decode(self.req.body)
        if self.req.max_tokens is not None:
            # the proxy reserved the client's money for this many completion tokens: never generate more
            capped = [k for k in ("max_tokens", "max_completion_tokens") if isinstance(body.get(k), int)]
            for key in capped:
                body[key] = min(body[key], self.req.max_tokens)
            if not capped:
                body["max_tokens"] = self.req.max_tokens
        if self.req.stream:
            # Usage is always requested from the engine: it is what the worker is paid by.
            body["stream"] = True
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return body

    async def _stream(self, endpoint: Endpoint, body: dict[str, Any]) -> None:
        generated = 0
        first: bytes | None = None
        async with contextlib.aclosing(self.engine.stream(endpoint, body)) as chunks:
            async for payload in chunks:
                answer = read_answer(payload)
                first = first or payload
                generated += answer.generated
                if answer.usage is not None:
                    self.usage = answer.usage
                if answer.usage_only and not self.req.include_usage:
                    continue
                await self._head()
                await self.send(ResponseChunk(call_id=self.req.call_id, data=payload, tokens=int(answer.generated),
                                              has_usage=answer.usage is not None))
        await self._head()
        if self.usage is None:
            # Some servers ignore include_usage; each streamed chunk is one generated token there. The prompt
            # cannot be counted without the engine's tokenizer, so it goes unbilled rather than guessed.
            self.usage = Usage(completion_tokens=generated)
            log.warning("engine streamed without usage: metered %d completion tokens by chunk count", generated,
                        extra={"fields": {"engine": self.engine.name}})
            if self.req.include_usage and first is not None:
                await self.send(ResponseChunk(call_id=self.req.call_id, data=usage_chunk(first, self.usage),
                                              has_usage=True))

    async def _complete(self, endpoint: Endpoint, body: dict[str, Any]) -> None:
        data = await self.engine.complete(endpoint, body)
        self.usage = read_answer(data).usage
        if self.usage is None:
            raise MeteringError("engine answered without reporting usage; refusing to serve unmetered")
        await self._head()
        await self.send(ResponseChunk(call_id=self.req.call_id, data=data))
