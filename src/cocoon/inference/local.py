"""In-process engines (fake, embedded): request parsing and OpenAI response formatting, written once.

A subclass only produces text pieces for a parsed request and fills in the token accounting; everything the
client sees (chunks, whole responses, usage, errors) is built here, so a streamed and a non-streamed answer
to the same request go through the same generation path and cannot disagree.
"""

from __future__ import annotations

import secrets
import time
from abc import abstractmethod
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import msgspec

from cocoon.core.errors import ApiError, ErrorCode, bad_request
from cocoon.core.usage import Usage
from cocoon.inference.base import Endpoint, Engine

_json = msgspec.json.Encoder()

# Request fields these engines cannot honour: refusing beats silently answering something else.
_UNSUPPORTED = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "echo",
    "suffix",
)
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_MAX_STOPS = 4


@dataclass(slots=True)
class GenRequest:
    """A validated generation request, the same for both endpoints."""

    endpoint: Endpoint
    messages: list[dict[str, str]]  # chat: role and plain-text content
    prompt: str  # completions
    max_tokens: int | None
    temperature: float
    top_p: float
    frequency_penalty: float
    presence_penalty: float
    seed: int | None
    stop: tuple[str, ...]

    def text(self) -> str:
        """All prompt text, for engines that only need the words."""
        if self.endpoint == "chat":
            return "\n".join(m["content"] for m in self.messages)
        return self.prompt


@dataclass(slots=True)
class Tally:
    """Token accounting a subclass fills in while it generates; `usage()` is what it adds up to."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str = "stop"

    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                     cached_tokens=self.cached_tokens)


class LocalEngine(Engine):
    """Base of engines that generate in this process and serve exactly one model."""

    model_id: str

    @abstractmethod
    def generate(self, req: GenRequest, usage: Tally) -> AsyncIterator[str]:
        """Yield the text of each generated token ("" allowed) and keep `usage` current.

        Set `usage.prompt_tokens` before the first piece, count every generated token in
        `usage.completion_tokens` before yielding it, and set `finish_reason` ("stop" or "length") before
        returning. Closing the iterator must stop the generation.
        """

    async def models(self) -> list[str]:
        return [self.model_id]

    async def stream(self, endpoint: Endpoint, body: dict[str, Any]) -> AsyncIterator[bytes]:
        req = self._parse(endpoint, body)
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        usage = Tally()
        out = _Chunks(endpoint, self.model_id)
        # The role chunk waits for the first piece so that failures before generation (prompt too long)
        # still reach the caller as an error instead of a half-started stream.
        started = False
        async with aclosing(self._pieces(req, usage)) as pieces:
            async for piece in pieces:
                if not started and endpoint == "chat":
                    yield out.role()
                started = True
                yield out.piece(piece)
        if not started and endpoint == "chat":
            yield out.role()
        yield out.finish(usage.finish_reason)
        if include_usage:
            yield out.usage(usage)

    async def complete(self, endpoint: Endpoint, body: dict[str, Any]) -> bytes:
        req = self._parse(endpoint, body)
        usage = Tally()
        async with aclosing(self._pieces(req, usage)) as pieces:
            text = "".join([piece async for piece in pieces])
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": usage.finish_reason}
        if endpoint == "chat":
            choice["message"] = {"role": "assistant", "content": text}
            object_, prefix = "chat.completion", "chatcmpl-"
        else:
            choice["text"] = text
            object_, prefix = "text_completion", "cmpl-"
        return _json.encode(
            {
                "id": prefix + secrets.token_hex(12),
                "object": object_,
                "created": int(time.time()),
                "model": self.model_id,
                "choices": [choice],
                "usage": usage.usage().to_openai(),
            }
        )

    async def _pieces(self, req: GenRequest, usage: Tally) -> AsyncIterator[str]:
        """The subclass's pieces with stop strings applied; a stop string and what follows are never sent."""
        async with aclosing(self.generate(req, usage)) as pieces:
            if not req.stop:
                async for piece in pieces:
                    if piece:
                        yield piece
                return
            held = ""  # text that may be the start of a stop string
            async for piece in pieces:
                held += piece
                cut = min((i for i in (held.find(s) for s in req.stop) if i >= 0), default=-1)
                if cut >= 0:
                    usage.finish_reason = "stop"
                    if cut:
                        yield held[:cut]
                    return
                keep = _stop_prefix_len(held, req.stop)
                if len(held) > keep:
                    yield held[: len(held) - keep]
                    held = held[len(held) - keep :]
            if held:
                yield held

    def _parse(self, endpoint: Endpoint, body: dict[str, Any]) -> GenRequest:
        for name in _UNSUPPORTED:
            value = body.get(name)
            if value is None or value is False or _harmless(name, value):
                continue
            raise self._unsupported(name)
        for name in ("n", "best_of"):
            if body.get(name) not in (None, 1):
                raise self._unsupported(name)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise bad_request("you must provide a `model`", code=ErrorCode.MISSING_PARAMETER, param="model")
        if model != self.model_id:
            raise ApiError(404, f"The model `{model}` does not exist; this engine serves `{self.model_id}`",
                           code=ErrorCode.MODEL_NOT_FOUND, param="model")
        messages: list[dict[str, str]] = []
        prompt = ""
        if endpoint == "chat":
            messages = self._messages(body.get("messages"))
        else:
            prompt = self._prompt(body.get("prompt"))
        max_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        return GenRequest(
            endpoint=endpoint,
            messages=messages,
            prompt=prompt,
            max_tokens=_int(body, max_name, 1, 1 << 31),
            temperature=_float(body, "temperature", 0.0, 2.0, 1.0),
            top_p=_float(body, "top_p", 0.0, 1.0, 1.0),
            frequency_penalty=_float(body, "frequency_penalty", -2.0, 2.0, 0.0),
            presence_penalty=_float(body, "presence_penalty", -2.0, 2.0, 0.0),
            seed=_int(body, "seed", -(1 << 63), (1 << 64) - 1),
            stop=_stops(body.get("stop")),
        )

    def _messages(self, raw: object) -> list[dict[str, str]]:
        if not isinstance(raw, list) or not raw:
            raise bad_request("`messages` must be a non-empty array", param="messages")
        messages = []
        for i, message in enumerate(raw):
            role = _ROLES.get(message.get("role")) if isinstance(message, dict) else None
            if role is None:
                raise bad_request(f"`messages[{i}].role` must be one of {', '.join(_ROLES)}",
                                  param=f"messages[{i}].role")
            messages.append({"role": role, "content": self._content(message.get("content"), i)})
        return messages

    def _content(self, content: object, i: int) -> str:
        if content is None or isinstance(content, str):
            return content or ""
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise self._unsupported(f"messages[{i}].content", "non-text content parts")
                text = part.get("text")
                if not isinstance(text, str):
                    raise bad_request(f"`messages[{i}].content` text parts need a string `text`",
                                      param=f"messages[{i}].content")
                texts.append(text)
            return "".join(texts)
        raise bad_request(f"`messages[{i}].content` must be a string or an array of text parts",
                          param=f"messages[{i}].content")

    def _prompt(self, raw: object) -> str:
        if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
            return raw[0]
        if isinstance(raw, str):
            return raw
        if isinstance(raw, list) and len(raw) > 1:
            raise self._unsupported("prompt", "several prompts in one request")
        raise bad_request("`prompt` must be a string", param="prompt")

    def _unsupported(self, param: str, what: str | None = None) -> ApiError:
        return ApiError(400, f"The {self.name} engine does not support {what or f'`{param}`'}",
                        code=ErrorCode.UNSUPPORTED_PARAMETER, param=param)


def _harmless(name: str, value: object) -> bool:
    """Values of unsupported fields that ask for nothing beyond plain text."""
    if name == "response_format":
        return isinstance(value, dict) and value.get("type") == "text"
    return name == "tool_choice" and value == "none"


def _int(body: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    value = body.get(name)
    # bool is an int subclass, and `true` is never a meaningful count
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi):
        return value
    raise bad_request(f"`{name}` must be an integer between {lo} and {hi}", param=name)


def _float(body: dict[str, Any], name: str, lo: float, hi: float, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi:
        return float(value)
    raise bad_request(f"`{name}` must be a number between {lo:g} and {hi:g}", param=name)


def _stops(raw: object) -> tuple[str, ...]:
    stops = [raw] if isinstance(raw, str) else raw
    if stops is None:
        return ()
    if (not isinstance(stops, list) or len(stops) > _MAX_STOPS
            or not all(isinstance(s, str) and s for s in stops)):
        raise bad_request(f"`stop` must be a non-empty string or an array of at most {_MAX_STOPS} of them",
                          param="stop")
    return tuple(stops)


def _stop_prefix_len(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could grow into one of `stops`."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class _Chunks:
    """Encodes the SSE payloads of one streamed answer."""

    def __init__(self, endpoint: Endpoint, model: str) -> None:
        self._chat = endpoint == "chat"
        self._head: dict[str, Any] = {
            "id": ("chatcmpl-" if self._chat else "cmpl-") + secrets.token_hex(12),
            "object": "chat.completion.chunk" if self._chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }

    def role(self) -> bytes:
        return self._choice({"delta": {"role": "assistant", "content": ""}}, None)

    def piece(self, text: str) -> bytes:
        return self._choice({"delta": {"content": text}} if self._chat else {"text": text}, None)

    def finish(self, reason: str) -> bytes:
        return self._choice({"delta": {}} if self._chat else {"text": ""}, reason)

    def usage(self, usage: Tally) -> bytes:
        return _json.encode({**self._head, "choices": [], "usage": usage.usage().to_openai()})

    def _choice(self, content: dict[str, Any], finish_reason: str | None) -> bytes:
        choice = {"index": 0, **content, "logprobs": None, "finish_reason": finish_reason}
        return _json.encode({**self._head, "choices": [choice]})
