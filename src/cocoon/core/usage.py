"""Token usage: the one type every hop counts, prices and reports, and its OpenAI JSON form."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import msgspec

Count = Annotated[int, msgspec.Meta(ge=0)]  # a decoded count is never negative: a peer cannot owe tokens

KINDS = ("prompt", "cached", "completion", "reasoning")


class Usage(msgspec.Struct, frozen=True, omit_defaults=True):
    """Tokens of one answer. `cached_tokens` are part of `prompt_tokens`, `reasoning_tokens` of
    `completion_tokens` (as in OpenAI's usage object). A media job counts the input it processed instead, in
    milliseconds (`media_ms`); it is not a token kind (`by_kind` and `total_tokens` leave it out)."""

    prompt_tokens: Count = 0
    cached_tokens: Count = 0
    completion_tokens: Count = 0
    reasoning_tokens: Count = 0
    media_ms: Count = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def prompt_only(self) -> Usage:
        """Its prompt's counts alone (no completion): what an engine knows before its first token, and what a
        stream broken off after it is charged for besides the completion tokens delivered."""
        return Usage(prompt_tokens=self.prompt_tokens, cached_tokens=self.cached_tokens)

    def by_kind(self) -> Iterator[tuple[str, int]]:
        """(kind, tokens) for each of KINDS, in that order: what metrics and totals are kept by."""
        yield "prompt", self.prompt_tokens
        yield "cached", self.cached_tokens
        yield "completion", self.completion_tokens
        yield "reasoning", self.reasoning_tokens

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's `usage` object."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }

    @staticmethod
    def from_openai(doc: Any) -> Usage:
        """Reads OpenAI's `usage` object (details optional, as engines differ); msgspec.ValidationError if it is
        not one."""
        return msgspec.convert(doc, OpenAIUsage).to_usage()


class _PromptDetails(msgspec.Struct):
    cached_tokens: Count | None = None


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: Count | None = None


class OpenAIUsage(msgspec.Struct):
    """OpenAI's `usage` object as decoded from an answer (embed it in a decoder's view to read usage in the same
    pass); `to_usage()` gives the Usage it says."""

    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None

    def to_usage(self) -> Usage:
        prompt, completion = self.prompt_tokens_details, self.completion_tokens_details
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                     cached_tokens=(prompt.cached_tokens or 0) if prompt else 0,
                     reasoning_tokens=(completion.reasoning_tokens or 0) if completion else 0)
