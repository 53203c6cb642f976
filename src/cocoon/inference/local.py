"""In-process engines (fake, embedded): what they take of a decoded request, and OpenAI answers, written once.

A subclass only produces text pieces for a `GenRequest` and fills in the token accounting; everything the
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
from msgspec import UNSET

from cocoon.core.errors import ApiError, ErrorCode
from cocoon.core.usage import Usage
from cocoon.inference.base import Engine, PromptCounted
from cocoon.inference.structured import (
    CallDelta,
    CallReader,
    CallStart,
    Structure,
    call_text,
    parse_structure,
    with_instruction,
)
from cocoon.openai.schema import (
    AssistantMessage,
    ChatCompletionRequest,
    CompletionRequest,
    DeveloperMessage,
    Endpoint,
    FunctionToolCall,
    Message,
    OpenAIRequest,
    SystemMessage,
    TextPart,
    ToolMessage,
    UserMessage,
)

_json = msgspec.json.Encoder()

# Beyond the tool fields (`OpenAIRequest.engine_features`), what these engines cannot honour: refusing beats
# silently answering something else. An unset, null or false value asks for nothing.
_UNSUPPORTED = ("logprobs", "top_logprobs", "logit_bias", "echo", "suffix")
_SINGLE = ("n", "best_of")  # one answer per request
_ROLES: dict[type[Message], str] = {SystemMessage: "system", DeveloperMessage: "system", UserMessage: "user",
                                    AssistantMessage: "assistant", ToolMessage: "tool"}
# What an engine with `supports_tools` reads itself (structured.py); `functions`/`function_call`, the legacy
# names, stay refused.
_STRUCTURE_FIELDS = ("tools", "tool_choice", "response_format")
_MAX_STOPS = 4


@dataclass(slots=True)
class GenRequest:
    """What a local engine needs of either request kind (`OpenAIRequest`), already checked."""

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
    structure: Structure | None = None  # chat: the JSON or tool call the answer must be
    grammar: str | None = None  # the engine's own form of `structure` (llama.cpp: GBNF)

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

    async def stream(self, request: OpenAIRequest, on_prompt: PromptCounted | None = None) -> AsyncIterator[bytes]:
        req = self._gen_request(request)
        endpoint = request.endpoint
        usage = Tally()
        out = _Chunks(endpoint, self.model_id)
        # The role chunk waits for the first piece so that failures before generation (prompt too long)
        # still reach the caller as an error instead of a half-started stream.
        started = False
        async with aclosing(self._answer(req, usage)) as events:
            async for event in events:
                if not started:
                    if on_prompt is not None:  # the prompt was counted before the first piece (generate's rule)
                        on_prompt(usage.usage().prompt_only())
                    if endpoint == "chat":
                        yield out.role(calls=not isinstance(event, str))
                started = True
                yield out.event(event)
        if not started and endpoint == "chat":
            yield out.role(calls=False)
        yield out.finish(usage.finish_reason)
        if request.include_usage:
            yield out.usage(usage)

    async def complete(self, request: OpenAIRequest) -> bytes:
        req = self._gen_request(request)
        endpoint = request.endpoint
        usage = Tally()
        texts: list[str] = []
        call: dict[str, Any] | None = None
        async with aclosing(self._answer(req, usage)) as events:
            async for event in events:
                if isinstance(event, str):
                    texts.append(event)
                elif isinstance(event, CallStart):
                    call = {"id": event.id, "type": "function", "function": {"name": event.name, "arguments": ""}}
                elif call is not None:
                    call["function"]["arguments"] += event.text
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": usage.finish_reason}
        if endpoint == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
            if call is not None:
                message = {"role": "assistant", "content": None, "tool_calls": [call]}
            choice["message"] = message
            object_, prefix = "chat.completion", "chatcmpl-"
        else:
            choice["text"] = "".join(texts)
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

    async def _answer(self, req: GenRequest, usage: Tally) -> AsyncIterator[str | CallDelta]:
        """The answer's text pieces, or the deltas of its tool call when the model wrote one."""
        structure = req.structure
        async with aclosing(self.generate(req, usage)) as pieces:
            if structure is None or not structure.calls:
                async for text in _stopped(pieces, req.stop, usage):
                    yield text
                return
            reader: CallReader | None = None
            async for piece in pieces:
                if not piece:
                    continue
                if reader is None:
                    # the grammar makes a call start with `{` and a text answer with anything else
                    if structure.text_allowed and not piece.startswith("{"):
                        async for text in _stopped(_prepend(piece, pieces), req.stop, usage):
                            yield text
                        return
                    reader = CallReader()
                for delta in reader.feed(piece):
                    yield delta
            if reader is not None:
                for delta in reader.finish():
                    yield delta
                if reader.complete:
                    usage.finish_reason = "tool_calls"

    def _gen_request(self, req: OpenAIRequest) -> GenRequest:
        """What this engine needs of a decoded request, refusing what it cannot honour."""
        features = [f for f in req.engine_features() if not (self.supports_tools and f in _STRUCTURE_FIELDS)]
        if features:
            raise self._unsupported(features[0])
        for name in _UNSUPPORTED:
            value = getattr(req, name, UNSET)
            if not (value is UNSET or value is None or value is False):
                raise self._unsupported(name)
        for name in _SINGLE:
            if getattr(req, name, UNSET) not in (UNSET, None, 1):
                raise self._unsupported(name)
        if req.model != self.model_id:
            raise ApiError(404, f"The model `{req.model}` does not exist; this engine serves `{self.model_id}`",
                           code=ErrorCode.MODEL_NOT_FOUND, param="model")
        structure = grammar = None
        if isinstance(req, CompletionRequest):
            messages, prompt = [], self._prompt(req.prompt)
        else:
            messages, prompt = [self._message(m, i) for i, m in enumerate(req.messages)], ""
            structure = self._structure(req)
            if structure is not None:
                grammar = self.grammar(structure)
                messages = with_instruction(messages, structure.instruction)
        return GenRequest(
            endpoint=req.endpoint,
            messages=messages,
            prompt=prompt,
            max_tokens=req.max_tokens,
            temperature=_number(req.temperature, 1.0),
            top_p=_number(req.top_p, 1.0),
            frequency_penalty=_number(req.frequency_penalty, 0.0),
            presence_penalty=_number(req.presence_penalty, 0.0),
            seed=req.seed if isinstance(req.seed, int) else None,
            stop=self._stops(req.stop),
            structure=structure,
            grammar=grammar,
        )

    def _structure(self, req: ChatCompletionRequest) -> Structure | None:
        if not self.supports_tools:
            return None
        fields = {name: getattr(req, name) for name in _STRUCTURE_FIELDS}
        return parse_structure({k: v for k, v in fields.items() if v is not UNSET})

    def grammar(self, structure: Structure) -> str | None:
        """This engine's constraint for `structure` (engines with `supports_tools` override it); ApiError (400)
        when it cannot hold to it."""
        raise self._unsupported(structure.param)

    def _message(self, message: Message, i: int) -> dict[str, str]:
        role = _ROLES.get(type(message))
        if role is None:
            raise self._unsupported(f"messages[{i}].role", f"`{type(message).__struct_config__.tag}` messages")
        content = message.content
        if isinstance(content, list):
            if not all(isinstance(part, TextPart) for part in content):
                raise self._unsupported(f"messages[{i}].content", "non-text content parts")
            content = "".join(part.text for part in content if isinstance(part, TextPart))
        text = content if isinstance(content, str) else ""
        if isinstance(message, AssistantMessage) and isinstance(message.tool_calls, list):
            # earlier calls, written back the way the model writes one
            calls = [call_text(c.function.name, c.function.arguments) for c in message.tool_calls
                     if isinstance(c, FunctionToolCall)]
            text = "\n".join([text, *calls]).strip()
        return {"role": role, "content": text}

    def _prompt(self, prompt: str | list[Any]) -> str:
        if isinstance(prompt, str):
            return prompt
        if len(prompt) > 1:
            raise self._unsupported("prompt", "several prompts in one request")
        if not isinstance(prompt[0], str):
            raise self._unsupported("prompt", "prompts given as token ids")
        return prompt[0]

    def _stops(self, stop: object) -> tuple[str, ...]:
        stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
        if len(stops) > _MAX_STOPS:
            raise self._unsupported("stop", f"more than {_MAX_STOPS} stop strings")
        # an empty stop string would end every answer before it began: it asks for nothing
        return tuple(s for s in stops if s)

    def _unsupported(self, param: str, what: str | None = None) -> ApiError:
        return ApiError(400, f"The {self.name} engine does not support {what or f'`{param}`'}",
                        code=ErrorCode.UNSUPPORTED_PARAMETER, param=param)


def _number(value: object, default: float) -> float:
    # the schema has checked the range; unset and null mean the OpenAI default
    return float(value) if isinstance(value, int | float) else default


async def _stopped(pieces: AsyncIterator[str], stops: tuple[str, ...], usage: Tally) -> AsyncIterator[str]:
    """Non-empty pieces with stop strings applied: a stop string and what follows are never sent."""
    if not stops:
        async for piece in pieces:
            if piece:
                yield piece
        return
    held = ""  # text that may be the start of a stop string
    async for piece in pieces:
        held += piece
        cut = min((i for i in (held.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            usage.finish_reason = "stop"
            if cut:
                yield held[:cut]
            return
        keep = _stop_prefix_len(held, stops)
        if len(held) > keep:
            yield held[: len(held) - keep]
            held = held[len(held) - keep :]
    if held:
        yield held


async def _prepend(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for piece in rest:
        yield piece


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

    def role(self, *, calls: bool) -> bytes:
        return self._choice({"delta": {"role": "assistant", "content": None if calls else ""}}, None)

    def event(self, event: str | CallDelta) -> bytes:
        if isinstance(event, str):
            return self._choice({"delta": {"content": event}} if self._chat else {"text": event}, None)
        if isinstance(event, CallStart):
            call: dict[str, Any] = {"index": 0, "id": event.id, "type": "function",
                                    "function": {"name": event.name, "arguments": ""}}
        else:
            call = {"index": 0, "function": {"arguments": event.text}}
        return self._choice({"delta": {"tool_calls": [call]}}, None)

    def finish(self, reason: str) -> bytes:
        return self._choice({"delta": {}} if self._chat else {"text": ""}, reason)

    def usage(self, usage: Tally) -> bytes:
        return _json.encode({**self._head, "choices": [], "usage": usage.usage().to_openai()})

    def _choice(self, content: dict[str, Any], finish_reason: str | None) -> bytes:
        choice = {"index": 0, **content, "logprobs": None, "finish_reason": finish_reason}
        return _json.encode({**self._head, "choices": [choice]})
