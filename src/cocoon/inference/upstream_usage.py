"""How an OpenAI-compatible server's stream is metered before its end (issue 15 item 4): once the first token is
relayed, the prompt is charged, so the worker must know the prompt's tokens by then.

OpenAI-compatible servers report usage with a stream's last payload only, unless asked for more: vLLM and SGLang
put the usage so far in every chunk with `stream_options.continuous_usage_stats`. `ChunkUsage` reads the prompt
from the first chunk and takes the per-chunk usage back off the chunks that carry choices (the worker and the
client read a payload with usage as the answer's last), putting the last one seen into a usage-only payload at the
end when the server sent none.

llama-cpp-python's own server streams no usage at all; it counts a text's tokens at POST /extras/tokenize/count.
`counted_text` is what to count there: the prompt's own text, without the chat template's tokens, so the count
is at most what the engine prefilled (a lower bound, never a guess above it). The count is made before the
generation starts: that server runs one request at a time, so a count asked for during a stream would wait for
its end.

Draining the stream in the background after the client left, to read its final usage, would not do: the proxy
settles a broken stream at once, from what the answer's head said the prompt was.
"""

from __future__ import annotations

from typing import Any

import msgspec

from cocoon.core.errors import DECODE_ERRORS
from cocoon.core.usage import OpenAIUsage, Usage
from cocoon.openai.schema import OpenAIRequest

CONTINUOUS = "continuous_usage_stats"  # vLLM's and SGLang's name for usage in every streamed chunk
COUNT_PATH = "/extras/tokenize/count"  # llama-cpp-python's server, at its root (beside /v1)


class _View(msgspec.Struct):
    usage: OpenAIUsage | None = None
    choices: list[msgspec.Raw] | None = None


class _CountAnswer(msgspec.Struct):
    count: int = -1  # absent: not a count


_view = msgspec.json.Decoder(_View)
_count = msgspec.json.Decoder(_CountAnswer)


def asking_every_chunk(body: dict[str, Any]) -> dict[str, Any]:
    """The request body (as sent by the worker) also asking for the usage so far in every chunk."""
    options = body.get("stream_options")
    return {**body, "stream_options": {**(options if isinstance(options, dict) else {}), CONTINUOUS: True}}


def read_count(raw: bytes) -> int | None:
    """The `count` of a tokenize-count answer, or None if it is not one."""
    try:
        count = _count.decode(raw).count
    except DECODE_ERRORS:
        return None
    return count if count >= 0 else None


class ChunkUsage:
    """Reads one stream's payloads as they pass: the prompt's usage in its first one, if the server put it there;
    with `strip` (the per-chunk usage was asked for by this engine, not by its caller), the usage taken back off
    chunks that carry choices."""

    def __init__(self, *, strip: bool) -> None:
        self.strip = strip
        self.prompt: Usage | None = None  # from the first payload, if it had usage
        self._held: dict[str, Any] | None = None  # the last chunk whose usage was taken off, usage included
        self._first = True

    def feed(self, payload: bytes) -> bytes:
        """The payload to relay in place of `payload`."""
        first, self._first = self._first, False
        if b'"usage"' not in payload:  # cheap: most chunks carry none
            return payload
        try:
            view = _view.decode(payload)
        except DECODE_ERRORS:  # the worker's metering refuses what cannot be read (negative counts too)
            return payload
        if view.usage is None:
            return payload
        if first:
            self.prompt = view.usage.to_usage().prompt_only()
        if not (self.strip and view.choices):
            self._held = None  # a usage-only payload: the stream's own last word on usage
            return payload
        chunk = msgspec.json.decode(payload)
        usage = chunk.pop("usage")
        self._held = {"id": chunk.get("id", ""), "object": chunk.get("object", ""), "created": chunk.get("created", 0),
                      "model": chunk.get("model", ""), "choices": [], "usage": usage}
        return msgspec.json.encode(chunk)

    def tail(self) -> bytes | None:
        """A usage-only payload to end the stream with: the last usage taken off a chunk, when no usage-only
        payload followed it."""
        held, self._held = self._held, None
        return msgspec.json.encode(held) if held is not None else None


def counted_text(req: OpenAIRequest) -> tuple[str, int]:
    """What of the prompt a tokenizer can count: its text (joined by newlines), and the tokens it already gives as
    token ids."""
    texts: list[str] = []
    ids = 0
    for message in getattr(req, "messages", ()):
        content = getattr(message, "content", None)
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(t for part in content for t in (getattr(part, "text", None), getattr(part, "refusal", None))
                         if isinstance(t, str))
    prompt = getattr(req, "prompt", None)
    if isinstance(prompt, str):
        texts.append(prompt)
    elif isinstance(prompt, list):
        for item in prompt:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, list):
                ids += len(item)
            else:  # one prompt of token ids
                ids += 1
    return "\n".join(texts), ids
