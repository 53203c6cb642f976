"""The one interface every inference engine speaks (the worker is its only caller)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from cocoon.core.usage import Usage
from cocoon.inference.weights import ModelHash, declared_hash
from cocoon.openai.schema import OpenAIRequest

PromptCounted = Callable[[Usage], None]


class Engine(ABC):
    """An OpenAI-compatible generator, handed requests already decoded and validated (`cocoon.openai.schema`).

    `stream` yields the JSON payload of each SSE `data:` event, exactly as the engine produced it (never the
    final `[DONE]`). The caller asks for `stream` with `stream_options.include_usage`, so the last payload
    carries `usage`. Closing the iterator early (client gone) must stop the generation.
    `complete` returns the whole non-streamed JSON response, `usage` included.
    An engine that knows the prompt's tokens before it generates calls `on_prompt` once with them (completion 0)
    before yielding its first generated payload: a stream broken off after its first token is charged for its
    prompt by that count. One that learns them only with the final usage does not call it.
    Engine failures raise `cocoon.core.errors.ApiError` with the engine's status and a message fit for the client.
    """

    name: str
    model_hash: str | None = None  # hex SHA-256 of the weights, where the engine can read them (dashboards)
    supports_tools: bool = False  # the fields of `cocoon.openai.schema.TOOL_FIELDS`
    declared: ModelHash | None = None  # the weights' hash as the operator declared it (`model_hash` option)

    def declare(self, model_hash: str | None) -> None:
        """Take the operator's `model_hash` option (ValueError unless a hex SHA-256)."""
        if model_hash is not None:
            self.declared = declared_hash(model_hash)
            self.model_hash = model_hash

    def weights(self, cache_file: Path | None = None) -> ModelHash | None:
        """The SHA-256 of the weights this engine serves, known before `start` (what the worker's claims carry):
        measured where the engine reads the weights itself, else as declared; None when neither. `cache_file`
        keeps measured hashes across restarts (inference/weights.py)."""
        return self.declared

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load models or open connections."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what start() took."""

    @abstractmethod
    async def models(self) -> list[str]: ...

    @abstractmethod
    def stream(self, req: OpenAIRequest, on_prompt: PromptCounted | None = None) -> AsyncIterator[bytes]: ...

    @abstractmethod
    async def complete(self, req: OpenAIRequest) -> bytes: ...
