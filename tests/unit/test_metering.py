"""Reading usage out of engine answers (worker/metering.py)."""

from __future__ import annotations

import msgspec

from cocoon.worker.metering import read_answer


def chunk(delta: dict[str, object]) -> bytes:
    return msgspec.json.encode({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                                "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})


def test_a_streamed_tool_call_delta_is_generated_output() -> None:
    """Tool-call deltas carry an array: they are read (not refused as unreadable) and counted as output."""
    delta = {"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}
    answer = read_answer(chunk(delta))
    assert answer.generated and answer.usage is None and not answer.usage_only
    assert not read_answer(chunk({"tool_calls": None, "content": None})).generated
    assert read_answer(chunk({"content": "x"})).generated
