"""Reading token usage out of the engine's answers: the one place that parses them (DESIGN §4)."""

from __future__ import annotations

import msgspec

from cocoon.wire.messages import Usage


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: int | None = None


class _UsageView(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None

    def to_usage(self) -> Usage:
        cached = (self.prompt_tokens_details.cached_tokens or 0) if self.prompt_tokens_details else 0
        reasoning = (
            (self.completion_tokens_details.reasoning_tokens or 0) if self.completion_tokens_details else 0
        )
        return Usage(prompt_tokens=self.prompt_tokens, cached_tokens=cached,
                     completion_tokens=self.completion_tokens, reasoning_tokens=reasoning)


class _AnswerView(msgspec.Struct):
    """Only the fields metering needs; everything else in the payload is skipped, not parsed."""

    usage: _UsageView | None = None
    choices: list[msgspec.Raw] | None = None


_decoder = msgspec.json.Decoder(_AnswerView)


class MeteringError(ValueError):
    pass


def read_answer(payload: bytes) -> tuple[Usage | None, bool]:
    """(usage if this payload carries it, whether it is a usage-only chunk with no choices)."""
    try:
        view = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise MeteringError(f"engine sent an unreadable answer: {exc}") from None
    usage = view.usage.to_usage() if view.usage is not None else None
    return usage, usage is not None and not view.choices
