"""The one interface every inference engine speaks (the worker is its only caller)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any, Literal

Endpoint = Literal["chat", "completions"]


class Engine(ABC):
    """An OpenAI-compatible generator.

    `stream` yields the JSON payload of each SSE `data:` event, exactly as the engine produced it (never the
    final `[DONE]`). The caller sets `stream=True` and `stream_options={"include_usage": true}` in `body`, so
    the last payload carries `usage`. Closing the iterator early (client gone) must stop the generation.
    `complete` returns the whole non-streamed JSON response, `usage` included.
    Engine failures raise `cocoon.core.errors.ApiError` with the engine's status and a precise message.
    """

    name: str
    supports_tools: bool = False  # tools, tool_choice, response_format

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load models or open connections."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what start() took."""

    @abstractmethod
    async def models(self) -> list[str]: ...

    @abstractmethod
    def stream(self, endpoint: Endpoint, body: dict[str, Any]) -> AsyncIterator[bytes]: ...

    @abstractmethod
    async def complete(self, endpoint: Endpoint, body: dict[str, Any]) -> bytes: ...
