"""Engines by name, as configuration and the command line spell them."""

from __future__ import annotations

from typing import Any

from cocoon.inference.base import Engine
from cocoon.inference.fake import FakeEngine
from cocoon.inference.openai_upstream import OpenAIUpstreamEngine

SPECS = ("embedded", "fake", "openai:URL")


def make_engine(spec: str, **options: Any) -> Engine:
    """`embedded`, `fake`, or `openai:http://HOST:PORT/v1`; `options` go to the engine's constructor."""
    if spec == "embedded":
        # imported here: loading llama.cpp's library is only worth it when the model will run
        from cocoon.inference.embedded import EmbeddedEngine

        return EmbeddedEngine(**options)
    if spec == "fake":
        return FakeEngine(**options)
    if spec.startswith("openai:"):
        url = spec.removeprefix("openai:")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"engine {spec!r}: the URL after `openai:` must start with http:// or https://")
        return OpenAIUpstreamEngine(url, **options)
    raise ValueError(f"unknown engine {spec!r}; expected one of: {', '.join(SPECS)}")
