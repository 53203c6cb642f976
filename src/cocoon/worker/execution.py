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
from cocoon.inference.base import Engine
from cocoon.ledger.receipts import AnswerHasher
from cocoon.openai import schema
from cocoon.openai.content import ContentDigest
from cocoon.openai.http import internal_error
from cocoon.openai.schema import OpenAIRequest, StreamOptions
from cocoon.seal import AnswerDigest, AnswerSealer
from cocoon.wire.messages import Message, Request, ResponseChunk, ResponseEnd, ResponseError, ResponseHead
from cocoon.worker.metering import MeteringError, read_answer, usage_chunk
from cocoon.worker.notary import Notary
from cocoon.worker.sealing import Unsealer, open_sealed

log = logging.getLogger(__name__)

Send = Callable[[Message], Awaitable[None]]


class Execution:
    """One request's run; `usage` is what the engine reported, the basis of billing. With a `notary`, its end
    carries a receipt over the payloads sent. A sealed request is opened with `unsealer`, its answer sealed chunk
    by chunk and closed with the end marker; its receipt also covers the sealed request and answer, which the
    proxy can check without the plaintext."""

    def __init__(self, engine: Engine, req: Request, send: Send, notary: Notary | None = None,
                 unsealer: Unsealer | None = None) -> None:
        self.engine = engine
        self.req = req
        self.send = send
        self.notary = notary
        self.answer = AnswerHasher()  # over the payloads sent, in order: the receipt's answer_hash
        # what the answer says, for a request marked deterministic: the receipt's content_digest (spot checks)
        self.content = ContentDigest() if req.deterministic else None
        self.unsealer = unsealer
        self.body = req.body  # the plaintext body (a sealed request's, once opened)
        self.sealer: AnswerSealer | None = None
        self.sealed_answer = AnswerDigest()  # over the sealed payloads and end marker: the receipt's sealed hash
        self.seal_key_id = b""  # the key a sealed request opened with: its answer's head names it
        self.started = time.monotonic()
        self.usage: Usage | None = None
        self.prompt: Usage | None = None  # the prompt as the engine counted it before the first token, if it did
        self._head_sent = False

    def _ms(self) -> float:
        return (time.monotonic() - self.started) * 1000

    async def _head(self) -> None:
        if not self._head_sent:
            self._head_sent = True
            await self.send(ResponseHead(call_id=self.req.call_id, status=200, worker_ms=self._ms(),
                                         usage=self.prompt, seal_key_id=self.seal_key_id))

    def _open(self) -> None:
        opened = open_sealed(self.unsealer, self.req)
        assert self.unsealer is not None  # it opened
        self.body, self.sealer, self.seal_key_id = opened.body, opened.answer, self.unsealer.key.key_id

    async def run(self) -> None:
        """Run the request and send its answer; every failure but a lost link becomes an error answer at once."""
        try:
            if self.req.sealed:
                self._open()
            request = self._engine_request()
            if self.req.stream:
                await self._stream(request)
            else:
                await self._complete(request)
        except ApiError as exc:
            await self._fail(exc)
            return
        except MeteringError as exc:
            log.warning("the engine's answer cannot be metered", extra={"fields": self._fields(reason=str(exc))})
            await self._fail(ApiError(502, "the engine's answer could not be metered; see the worker's log",
                                      type="api_error", code=ErrorCode.ENGINE_ERROR))
            return
        except ConnectionError:
            raise  # the link is gone: nobody is left to answer
        except Exception as exc:
            await self._fail(internal_error(exc, "request failed", self._fields()))
            return
        usage = self.usage or Usage()
        sealed_end = b""
        if self.sealer is not None:
            sealed_end = self.sealer.end()
            self.sealed_answer.add(sealed_end)
        receipt = None
        if self.notary is not None:
            receipt = self.notary.receipt(self.req, usage, self.answer.digest(), body=self.body,
                                          sealed_answer_hash=self.sealed_answer.digest() if self.sealer else b"",
                                          content_digest=self.content.digest() if self.content else b"")
        await self.send(ResponseEnd(call_id=self.req.call_id, usage=usage, worker_ms=self._ms(), receipt=receipt,
                                    sealed_end=sealed_end))

    def _fields(self, **more: Any) -> dict[str, Any]:
        return {"engine": self.engine.name, **more}  # request_id: added by the request's log scope

    async def _fail(self, exc: ApiError) -> None:
        log.info("request refused or failed", extra={"fields": self._fields(status=exc.status, code=exc.code)})
        await self.send(ResponseError.from_api(exc, self.req.call_id))

    def _engine_request(self) -> OpenAIRequest:
        """The body decoded once, the way the engine gets it: a peer may have skipped its client's checks, so
        what fails the schema is refused here (400) rather than failing in the engine."""
        request = schema.decode_request(self.req.endpoint, self.body)
        features = request.engine_features()
        if features and not self.engine.supports_tools:
            raise ApiError(400, f"the `{self.engine.name}` engine serving `{self.req.model}` does not support "
                                f"`{features[0]}`", code=ErrorCode.UNSUPPORTED_PARAMETER, param=features[0])
        # the proxy reserved the client's money for `choices` answers of `max_tokens` each: never generate more
        choices, param = request.choices()
        if choices > self.req.choices:
            raise ApiError(400, f"`{param}` makes the body ask for {choices} choices, but the request was reserved "
                                f"for {self.req.choices}", code=ErrorCode.INVALID_VALUE, param=param)
        changes: dict[str, Any] = {}
        if self.req.max_tokens is not None:
            # the proxy reserved the client's money for this many completion tokens: never generate more
            for name in ("max_tokens_value", "max_completion_tokens"):
                value = getattr(request, name, None)
                if isinstance(value, int):
                    changes[name] = min(value, self.req.max_tokens)
            if not changes:
                changes["max_tokens_value"] = self.req.max_tokens
        if self.req.stream:
            # Usage is always requested from the engine: it is what the worker is paid by.
            options = request.stream_options
            options = options if isinstance(options, StreamOptions) else StreamOptions()
            changes["stream_value"] = True
            changes["stream_options"] = msgspec.structs.replace(options, include_usage=True)
        elif request.stream:  # the wire says whole: the proxy relays it so
            changes["stream_value"], changes["stream_options"] = False, msgspec.UNSET
        return msgspec.structs.replace(request, **changes)

    async def _stream(self, request: OpenAIRequest) -> None:
        generated = 0
        first: bytes | None = None
        async with contextlib.aclosing(self.engine.stream(request, self._prompt_counted)) as chunks:
            async for payload in chunks:
                answer = read_answer(payload)
                first = first or payload
                generated += answer.generated
                if answer.usage is not None:
                    self.usage = answer.usage
                    if not self._head_sent:  # an engine that reports usage as it goes: the prompt is known now
                        self._prompt_counted(answer.usage)
                if answer.usage_only and not self.req.include_usage:
                    continue
                await self._head()
                await self._chunk(ResponseChunk(call_id=self.req.call_id, data=payload, tokens=int(answer.generated),
                                                has_usage=answer.usage is not None))
        await self._head()
        if self.usage is None:
            # Some servers ignore include_usage; each streamed chunk is one generated token there. The prompt is
            # what the engine counted before the first token (on_prompt), or goes unbilled rather than guessed.
            prompt = self.prompt or Usage()
            self.usage = Usage(prompt_tokens=prompt.prompt_tokens, cached_tokens=prompt.cached_tokens,
                               completion_tokens=generated)
            log.warning("engine streamed without usage: metered %d completion tokens by chunk count", generated,
                        extra={"fields": {"engine": self.engine.name}})
            if self.req.include_usage and first is not None:
                await self._chunk(ResponseChunk(call_id=self.req.call_id, data=usage_chunk(first, self.usage),
                                                has_usage=True))

    async def _chunk(self, chunk: ResponseChunk) -> None:
        if self.notary is not None:
            self.answer.update(chunk.data, has_usage=chunk.has_usage)
            if self.content is not None:
                self.content.add(chunk.data)
        if self.sealer is not None:  # the proxy relays the sealed payload only
            chunk = msgspec.structs.replace(chunk, data=self.sealer.seal(chunk.data))
            self.sealed_answer.add(chunk.data)
        await self.send(chunk)

    def _prompt_counted(self, usage: Usage) -> None:
        self.prompt = usage.prompt_only()

    async def _complete(self, request: OpenAIRequest) -> None:
        data = await self.engine.complete(request)
        self.usage = read_answer(data).usage
        if self.usage is None:
            raise MeteringError("engine answered without reporting usage; refusing to serve unmetered")
        await self._head()
        await self._chunk(ResponseChunk(call_id=self.req.call_id, data=data, has_usage=True))
