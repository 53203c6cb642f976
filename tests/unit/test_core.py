"""The bottom floor: Usage and its OpenAI form, error codes and their wire form, request ids."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.core.errors import ApiError, CocoonError, ErrorCode
from cocoon.core.ids import is_request_id, new_request_id, request_id_from
from cocoon.core.usage import KINDS, Usage
from cocoon.wire import frames
from cocoon.wire.messages import ResponseEnd, ResponseError

counts = st.integers(min_value=0, max_value=1 << 40)


@settings(max_examples=50)
@given(counts, counts, counts, counts)
def test_usage_openai_round_trip(prompt: int, cached: int, completion: int, reasoning: int) -> None:
    usage = Usage(prompt_tokens=prompt, cached_tokens=cached, completion_tokens=completion,
                  reasoning_tokens=reasoning)
    doc = usage.to_openai()
    assert doc["total_tokens"] == prompt + completion == usage.total_tokens
    assert Usage.from_openai(msgspec.json.decode(msgspec.json.encode(doc))) == usage
    assert dict(usage.by_kind()) == {"prompt": prompt, "cached": cached, "completion": completion,
                                     "reasoning": reasoning}
    assert [kind for kind, _ in usage.by_kind()] == list(KINDS)


def test_usage_from_openai_without_details() -> None:
    assert Usage.from_openai({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}) == Usage(
        prompt_tokens=3, completion_tokens=4)
    assert Usage.from_openai({"prompt_tokens": 3, "prompt_tokens_details": None,
                              "completion_tokens_details": {"reasoning_tokens": None}}) == Usage(prompt_tokens=3)


@pytest.mark.parametrize("field", ["prompt_tokens", "completion_tokens"])
def test_negative_openai_counts_are_refused(field: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=">= 0"):
        Usage.from_openai({field: -1})
    with pytest.raises(msgspec.ValidationError, match=">= 0"):
        Usage.from_openai({"prompt_tokens_details": {"cached_tokens": -5}})


def test_negative_wire_counts_are_refused() -> None:
    """A peer cannot report negative tokens (a refund it was never owed): the frame does not decode."""
    bad = msgspec.msgpack.encode({"t": "end", "id": 1, "usage": {"completion_tokens": -3}})
    with pytest.raises(frames.FrameError, match=">= 0"):
        frames.FrameReader().feed(len(bad).to_bytes(4, "big") + bad)
    good = frames.encode(ResponseEnd(call_id=1, usage=Usage(completion_tokens=3)))
    assert frames.FrameReader().feed(good) == [ResponseEnd(call_id=1, usage=Usage(completion_tokens=3))]


def test_error_codes() -> None:
    assert ErrorCode.known("queue_full") is ErrorCode.QUEUE_FULL
    assert ErrorCode.known("BadRequestError") is None
    with pytest.raises(ValueError):
        ApiError(400, "typo", code="queue_ful")  # type: ignore[arg-type]
    err = ApiError(400, "bad", code=ErrorCode.INVALID_VALUE, param="temperature")
    assert isinstance(err, CocoonError)
    assert msgspec.json.decode(err.to_json()) == {"error": {"message": "bad", "type": "invalid_request_error",
                                                            "code": "invalid_value", "param": "temperature"}}


def test_wire_error_round_trip_keeps_every_field() -> None:
    err = ApiError(429, "slow down", type="rate_limit_error", code=ErrorCode.TOKENS_PER_MINUTE_EXCEEDED,
                   param="max_tokens", retry_after=7)
    msg = ResponseError.from_api(err, 5)
    (decoded,) = frames.FrameReader().feed(frames.encode(msg))
    assert isinstance(decoded, ResponseError) and decoded.call_id == 5
    back = decoded.to_api()
    assert (back.status, back.message, back.type, back.code, back.param, back.retry_after) == (
        429, "slow down", "rate_limit_error", ErrorCode.TOKENS_PER_MINUTE_EXCEEDED, "max_tokens", 7)


def test_unknown_wire_code_becomes_upstream_error() -> None:
    """A newer peer's code does not break the frame nor the conversion: it is a failure upstream of us."""
    back = ResponseError(call_id=1, status=503, message="new", code="some_future_code").to_api()
    assert back.code is ErrorCode.UPSTREAM_ERROR and back.status == 503 and back.message == "new"


def test_request_ids() -> None:
    made = {new_request_id() for _ in range(100)}
    assert len(made) == 100 and all(is_request_id(i) for i in made)
    assert request_id_from("trace-42:a.b_c") == "trace-42:a.b_c"
    assert request_id_from("x" * 64) == "x" * 64
    for bad in (None, "", "x" * 65, "has space", "new\nline", "quote\"", "é"):
        kept = request_id_from(bad)
        assert kept != bad and is_request_id(kept)


def _readme_error_codes() -> list[str]:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Error codes", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M)


def test_the_readme_lists_every_error_code_and_only_those() -> None:
    listed = _readme_error_codes()
    assert len(listed) == len(set(listed)), "a code is listed twice"
    assert set(listed) == {code.value for code in ErrorCode}


def test_codes_a_peer_makes_up_share_one_label() -> None:
    """Issue 15 item 17: metric and stats labels stay bounded whatever codes peers send."""
    assert ErrorCode.label("queue_full") == "queue_full"
    assert ErrorCode.label(ErrorCode.ENGINE_ERROR) == "engine_error"
    assert {ErrorCode.label(f"made_up_{i}") for i in range(100)} == {"other"}
    assert ErrorCode.label(None) == "error"


def test_an_error_told_with_another_message_keeps_everything_else() -> None:
    error = ApiError(429, "busy", type="rate_limit_error", code=ErrorCode.CONCURRENCY_LIMIT_EXCEEDED, param="model",
                     retry_after=3)
    told = error.with_message("busy (gave up after 2 workers)", retry_after=None)
    assert (told.status, told.message, told.type, told.code, told.param, told.retry_after) == (
        429, "busy (gave up after 2 workers)", "rate_limit_error", ErrorCode.CONCURRENCY_LIMIT_EXCEEDED, "model", None)
    assert error.message == "busy" and error.retry_after == 3  # the error it was handed is not rewritten


def test_prompt_only_keeps_the_prompt_counts() -> None:
    usage = Usage(prompt_tokens=10, cached_tokens=4, completion_tokens=7, reasoning_tokens=2)
    assert usage.prompt_only() == Usage(prompt_tokens=10, cached_tokens=4)
