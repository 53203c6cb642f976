"""Reading token usage out of the engine's answers: the one place that parses them."""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from cocoon.core.errors import DECODE_ERRORS, CocoonError
from cocoon.core.usage import OpenAIUsage, Usage


class _DeltaView(msgspec.Struct):
    content: str | None = None
    tool_calls: list[msgspec.Raw] | None = None  # (a bare `Raw | None` only ever decodes null)
    reasoning_content: str | None = None


class _ChoiceView(msgspec.Struct):
    delta: _DeltaView | None = None
    text: str | None = None


class _AnswerView(msgspec.Struct):
    """Only the fields metering needs; everything else in the payload is skipped, not parsed."""

    id: str = ""
    model: str = ""
    created: int = 0
    object: str = ""
    usage: OpenAIUsage | None = None
    choices: list[_ChoiceView] | None = None


_decoder = msgspec.json.Decoder(_AnswerView)


class MeteringError(ValueError, CocoonError):
    pass


class Answer(NamedTuple):
    usage: Usage | None  # what the engine reported in this payload, if anything
    usage_only: bool  # a final usage chunk with no choices (dropped unless the client asked for it)
    generated: bool  # carries generated output: one token, as streaming servers send one per chunk


def read_answer(payload: bytes) -> Answer:
    try:
        view = _decoder.decode(payload)
    except DECODE_ERRORS as exc:  # a negative token count too: msgspec.ValidationError is a DecodeError
        raise MeteringError(f"engine sent an unreadable answer: {exc}") from None
    usage = view.usage.to_usage() if view.usage is not None else None
    generated = any(
        c.text or (c.delta is not None and (c.delta.content or c.delta.tool_calls or c.delta.reasoning_content))
        for c in view.choices or ()
    )
    return Answer(usage, usage is not None and not view.choices, generated)


def usage_chunk(first_payload: bytes, usage: Usage) -> bytes:
    """A final usage-only chunk, for engines that stream without one (llama.cpp's Python server does)."""
    view = _decoder.decode(first_payload)
    return msgspec.json.encode({
        "id": view.id, "object": view.object or "chat.completion.chunk", "created": view.created,
        "model": view.model, "choices": [], "usage": usage.to_openai(),
    })
