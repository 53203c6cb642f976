"""Validation of OpenAI request bodies at the client's HTTP API: every refusal names its field precisely."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.core.errors import ApiError
from cocoon.openai import schema
from cocoon.openai.schema import (
    ROLES,
    ChatCompletionRequest,
    CompletionRequest,
    parse_chat_request,
    parse_completion_request,
    validation_error,
)

LIMIT = 4096
PROMPT_LIMIT = 1000
Parser = Callable[[bytes], Any]


def chat(raw: bytes) -> ChatCompletionRequest:
    return parse_chat_request(raw, max_tokens_limit=LIMIT, max_prompt_chars=PROMPT_LIMIT)


def completion(raw: bytes) -> CompletionRequest:
    return parse_completion_request(raw, max_tokens_limit=LIMIT, max_prompt_chars=PROMPT_LIMIT)


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def completion_body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": "once upon a time", **fields}


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


def refused(parse: Parser, raw: bytes, code: str, param: str | None) -> str:
    """Parse a body that must be refused; check the OpenAI-style error and return its message."""
    with pytest.raises(ApiError) as info:
        parse(raw)
    err = info.value
    assert (err.status, err.type, err.code, err.param) == (400, "invalid_request_error", code, param), err
    return err.message


# --- JSON itself ---


@pytest.mark.parametrize("raw", [b"", b"{", b'{"model": "m",}', b"nul", b'{"model": NaN}', b"\xff\xfe"])
@pytest.mark.parametrize("parse", [chat, completion])
def test_body_that_is_not_json_is_refused(parse: Parser, raw: bytes) -> None:
    assert "not valid JSON" in refused(parse, raw, "invalid_json", None)


@pytest.mark.parametrize(("raw", "got"), [(b"[]", "array"), (b'"hi"', "string"), (b"3", "integer")])
def test_top_level_must_be_an_object(raw: bytes, got: str) -> None:
    message = refused(chat, raw, "invalid_type", None)
    assert "JSON object" in message and got in message


def test_nesting_too_deep_for_the_parser_is_a_client_error() -> None:
    deep = encode(chat_body())[:-1] + b', "tools": [{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}"
    assert "nested too deeply" in refused(chat, deep, "invalid_json", None)


# --- duplicate keys ---


@pytest.mark.parametrize(
    ("raw", "key", "param"),
    [
        (b'{"model": "a", "model": "b", "messages": [{"role": "user", "content": "hi"}]}', "model", "model"),
        (b'{"model": "a", "messages": [{"role": "user", "content": "x", "content": "y"}]}', "content",
         "messages[0].content"),
        (b'{"model": "a", "messages": [{"role": "user", "content": "a:b"}], "metadata": {"k": "1:", "k": "2"}}',
         "k", "metadata.k"),
        (b'{"model": "a", "messages": [{"role": "user", "content": "x"}], "tools": [{"f": [{"p": 1, "p": 1}]}]}',
         "p", "tools[0].f[0].p"),
        # An escaped colon keeps the cheap count from ruling duplicates out; the full parse still finds them.
        (b'{"model": "a", "messages": [{"role": "user", "content": "\\u003a"}], "metadata": {"k": "", "k": ""}}',
         "k", "metadata.k"),
        # Escaped quotes and colons inside strings must not hide a duplicate either.
        (b'{"model": "a", "messages": [{"role": "user", "content": "\\": \\"", "role": "user"}]}', "role",
         "messages[0].role"),
    ],
)
def test_duplicate_keys_are_refused_at_any_depth(raw: bytes, key: str, param: str) -> None:
    assert f"`{key}`" in refused(chat, raw, "duplicate_key", param)


def test_duplicate_keys_in_completion_requests_are_refused() -> None:
    raw = b'{"model": "a", "prompt": "x", "stop": "y", "stop": "z"}'
    assert "`stop`" in refused(completion, raw, "duplicate_key", "stop")


@pytest.mark.parametrize(
    "raw",
    [
        # Keys spelled with escapes differ from each other, and colons hide in strings: none repeats.
        b'{"model": "a", "messages": [{"role": "user", "content": "\\": \\"x:"}], "metadata": {"k\\u003a": "",'
        b' "k": "\\u003A", "\\\\": ":"}}',
        b'{"model":"a","messages":[{"role":"user","content":"\\\\"}],"metadata":{"\\\\":"\\\\\\""}}',
    ],
)
def test_distinct_keys_with_escapes_and_colons_are_not_mistaken_for_duplicates(raw: bytes) -> None:
    assert chat(raw).to_body() == json.loads(raw)


def test_only_bodies_the_cheap_count_cannot_clear_pay_for_the_full_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    monkeypatch.setattr(schema, "_find_duplicate", lambda raw: calls.append(raw))
    chat(encode(chat_body(messages=[{"role": "user", "content": 'say "a: b"'}], metadata={"k:": ":"})))
    assert calls == []
    escaped = b'{"model": "m", "messages": [{"role": "user", "content": "\\u003a"}]}'
    chat(escaped)
    assert calls == [escaped]


# --- unknown and missing fields ---


@pytest.mark.parametrize(
    ("body", "field", "param", "where"),
    [
        (chat_body(frobnicate=1), "frobnicate", "frobnicate", "request"),
        (chat_body(messages=[{"role": "user", "content": "hi", "mood": "ok"}]), "mood", "messages[0].mood",
         "messages[0]"),
        (chat_body(messages=[{"role": "user", "content": [{"type": "text", "text": "a", "bold": True}]}]), "bold",
         "messages[0].content[0].bold", "messages[0].content[0]"),
        (chat_body(messages=[{"role": "user", "content": [{"type": "image_url",
                                                           "image_url": {"url": "u", "zoom": 2}}]}]),
         "zoom", "messages[0].content[0].image_url.zoom", "messages[0].content[0].image_url"),
        (chat_body(stream_options={"include_usage": True, "every": 1}), "every", "stream_options.every",
         "stream_options"),
        # A field valid for one role is unknown to another.
        (chat_body(messages=[{"role": "user", "content": "hi", "tool_call_id": "c1"}]), "tool_call_id",
         "messages[0].tool_call_id", "messages[0]"),
    ],
)
def test_unknown_fields_are_refused_with_their_path(body: dict[str, Any], field: str, param: str,
                                                    where: str) -> None:
    assert f"unknown field `{field}` in {where}" in refused(chat, encode(body), "unknown_field", param)


def test_unknown_completion_field_is_refused() -> None:
    message = refused(completion, encode(completion_body(messages=[])), "unknown_field", "messages")
    assert "`messages`" in message


@pytest.mark.parametrize(
    ("parse", "body", "field", "param"),
    [
        (chat, {"messages": [{"role": "user", "content": "hi"}]}, "model", "model"),
        (chat, {"model": "m"}, "messages", "messages"),
        (completion, {"model": "m"}, "prompt", "prompt"),
        (completion, {"prompt": "p"}, "model", "model"),
        (chat, chat_body(messages=[{"content": "hi"}]), "role", "messages[0].role"),
        (chat, chat_body(messages=[{"role": "user"}]), "content", "messages[0].content"),
        (chat, chat_body(messages=[{"role": "tool", "content": "42"}]), "tool_call_id",
         "messages[0].tool_call_id"),
        (chat, chat_body(messages=[{"role": "user", "content": [{"type": "text"}]}]), "text",
         "messages[0].content[0].text"),
        (chat, chat_body(messages=[{"role": "user", "content": [{"text": "hi"}]}]), "type",
         "messages[0].content[0].type"),
    ],
)
def test_missing_required_fields_are_refused(parse: Parser, body: dict[str, Any], field: str,
                                             param: str) -> None:
    assert f"`{field}`" in refused(parse, encode(body), "missing_field", param)


# --- types ---


@pytest.mark.parametrize(
    ("parse", "body", "param", "expected"),
    [
        (chat, chat_body(model=7), "model", "string"),
        (chat, chat_body(messages={"role": "user"}), "messages", "array"),
        (chat, chat_body(messages=[{"role": "user", "content": 5}]), "messages[0].content", "string or array"),
        (chat, chat_body(messages=[{"role": "user", "content": None}]), "messages[0].content",
         "string or array"),
        (chat, chat_body(temperature="hot"), "temperature", "number"),
        (chat, chat_body(temperature=True), "temperature", "number"),
        (chat, chat_body(n=1.5), "n", "integer"),
        (chat, chat_body(stream="yes"), "stream", "boolean"),
        (chat, chat_body(stop=[1]), "stop[0]", "string"),
        (chat, chat_body(tools={"type": "function"}), "tools", "array"),
        (chat, chat_body(metadata={"k": 1}), "metadata[...]", "string"),
        (completion, completion_body(prompt={"text": "x"}), "prompt", "string or array"),
        (completion, completion_body(prompt=[[1, "a"]]), "prompt[0][1]", "integer"),
        (completion, completion_body(echo=1), "echo", "boolean"),
    ],
)
def test_wrong_types_are_refused_naming_path_and_expected_type(parse: Parser, body: dict[str, Any], param: str,
                                                                expected: str) -> None:
    message = refused(parse, encode(body), "invalid_type", param)
    assert f"`{param}`" in message and f"expected {expected}" in message


@pytest.mark.parametrize("prompt", [["a", 1], [1, [2]], [[1], "b"]])
def test_completion_prompt_shapes_cannot_be_mixed(prompt: list[Any]) -> None:
    assert "`prompt`" in refused(completion, encode(completion_body(prompt=prompt)), "invalid_type", "prompt")


@pytest.mark.parametrize("prompt", ["", "text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_every_completion_prompt_shape_is_accepted(prompt: Any) -> None:
    assert completion(encode(completion_body(prompt=prompt))).prompt == prompt


# --- token limits ---


@pytest.mark.parametrize(("parse", "make", "field"), [
    (chat, chat_body, "max_tokens"),
    (chat, chat_body, "max_completion_tokens"),
    (completion, completion_body, "max_tokens"),
])
def test_token_limits(parse: Parser, make: Callable[..., dict[str, Any]], field: str) -> None:
    assert parse(encode(make(**{field: LIMIT}))).max_tokens == LIMIT
    message = refused(parse, encode(make(**{field: LIMIT + 1})), "max_tokens_exceeded", field)
    assert f"`{field}`" in message and str(LIMIT) in message
    assert f"`{field}`" in refused(parse, encode(make(**{field: 0})), "invalid_value", field)
    assert f"`{field}`" in refused(parse, encode(make(**{field: -5})), "invalid_value", field)


def test_max_tokens_prefers_max_completion_tokens() -> None:
    assert chat(encode(chat_body(max_tokens=10, max_completion_tokens=20))).max_tokens == 20
    assert chat(encode(chat_body(max_tokens=None))).max_tokens is None
    assert completion(encode(completion_body())).max_tokens is None


# --- prompt length ---


def _padded(body: dict[str, Any]) -> bytes:
    # Whitespace makes the body longer than the prompt limit without adding prompt text, so the count runs.
    return encode(body)[:-1] + b" " * PROMPT_LIMIT + b"}"


@pytest.mark.parametrize(
    ("parse", "make", "param"),
    [
        (chat, lambda n: chat_body(messages=[{"role": "user", "content": "x" * n}]), "messages"),
        (chat, lambda n: chat_body(messages=[
            {"role": "system", "content": [{"type": "text", "text": "x" * (n - 10)}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "y" * 5}}]},
            {"role": "tool", "tool_call_id": "c", "content": "z" * 5}]), "messages"),
        (completion, lambda n: completion_body(prompt="x" * n), "prompt"),
        (completion, lambda n: completion_body(prompt=["x" * (n - 3), "abc"]), "prompt"),
        (completion, lambda n: completion_body(prompt=[[7] * (n - 1), [8]]), "prompt"),
        (completion, lambda n: completion_body(prompt="x" * (n - 2), suffix="yy"), "prompt"),
    ],
)
def test_prompt_longer_than_the_limit_is_refused(parse: Parser, make: Callable[[int], dict[str, Any]],
                                                 param: str) -> None:
    parse(_padded(make(PROMPT_LIMIT)))
    message = refused(parse, _padded(make(PROMPT_LIMIT + 1)), "prompt_too_long", param)
    assert str(PROMPT_LIMIT + 1) in message and str(PROMPT_LIMIT) in message


# --- ranges the OpenAI spec states ---


@pytest.mark.parametrize(
    ("parse", "make", "field", "good", "bad"),
    [
        (chat, chat_body, "temperature", [0, 0.5, 2, 2.0], [-0.01, 2.01, 3]),
        (chat, chat_body, "top_p", [0, 1, 0.9], [-0.1, 1.01]),
        (chat, chat_body, "presence_penalty", [-2, 2, 0.0], [-2.1, 2.5]),
        (chat, chat_body, "frequency_penalty", [-2.0, 2], [-3, 2.01]),
        (chat, chat_body, "n", [1, 128], [0, -1, 129]),
        (chat, chat_body, "top_logprobs", [0, 20], [-1, 21]),
        (chat, chat_body, "logit_bias", [{"50256": -100}, {"1": 100.0}], [{"1": 101}, {"2": -100.5}]),
        (completion, completion_body, "temperature", [0, 2], [2.5]),
        (completion, completion_body, "logprobs", [0, 5], [6, -1]),
        (completion, completion_body, "best_of", [1, 20], [21]),
        (completion, completion_body, "n", [1], [0]),
    ],
)
def test_values_out_of_the_stated_range_are_refused(parse: Parser, make: Callable[..., dict[str, Any]],
                                                    field: str, good: list[Any], bad: list[Any]) -> None:
    for value in good:
        assert parse(encode(make(**{field: value}))).to_body()[field] == value
    for value in bad:
        param = f"{field}[...]" if isinstance(value, dict) else field
        assert f"`{param}`" in refused(parse, encode(make(**{field: value})), "invalid_value", param)


def test_empty_messages_are_refused() -> None:
    assert "`messages`" in refused(chat, encode(chat_body(messages=[])), "invalid_value", "messages")


def test_empty_prompt_list_is_refused() -> None:
    assert "`prompt`" in refused(completion, encode(completion_body(prompt=[])), "invalid_value", "prompt")


# --- roles and content ---


def test_unknown_role_is_refused_listing_the_roles() -> None:
    message = refused(chat, encode(chat_body(messages=[{"role": "robot", "content": "x"}])), "invalid_value",
                      "messages[0].role")
    assert "'robot'" in message and all(role in message for role in ROLES)


@pytest.mark.parametrize(
    "message",
    [
        {"role": "system", "content": "be brief", "name": "s"},
        {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": [{"type": "text", "text": "see"},
                                     {"type": "image_url", "image_url": {"url": "data:,", "detail": "low"}},
                                     {"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}},
                                     {"type": "file", "file": {"file_id": "f1"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "custom", "custom": {"name": "g", "input": "x"}}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}], "refusal": "no"},
        {"role": "assistant"},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "function", "name": "f", "content": None},
    ],
)
def test_each_role_accepts_its_fields(message: dict[str, Any]) -> None:
    body = chat_body(messages=[message])
    assert chat(encode(body)).to_body() == body


@pytest.mark.parametrize(
    ("message", "param"),
    [
        # Images are user input; other roles speak text.
        ({"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]},
         "messages[0].content[0].type"),
        ({"role": "user", "content": [{"type": "video_url", "video_url": {"url": "u"}}]},
         "messages[0].content[0].type"),
        ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u", "detail": "max"}}]},
         "messages[0].content[0].image_url.detail"),
        ({"role": "assistant", "tool_calls": [{"id": "c", "type": "magic"}]}, "messages[0].tool_calls[0].type"),
    ],
)
def test_content_parts_are_typed(message: dict[str, Any], param: str) -> None:
    assert f"`{param}`" in refused(chat, encode(chat_body(messages=[message])), "invalid_value", param)


# --- what the rest of the client reads ---


def test_stream_and_usage_flags() -> None:
    plain = chat(encode(chat_body()))
    assert (plain.stream, plain.include_usage) == (False, False)
    streamed = chat(encode(chat_body(stream=True, stream_options={"include_usage": True})))
    assert (streamed.stream, streamed.include_usage) == (True, True)
    assert chat(encode(chat_body(stream=None, stream_options=None))).include_usage is False
    assert completion(encode(completion_body(stream=True))).stream is True


def test_engine_features_list_the_tool_fields_given() -> None:
    assert chat(encode(chat_body())).engine_features() == []
    assert chat(encode(chat_body())).uses_tools is False
    request = chat(encode(chat_body(response_format={"type": "json_object"}, tool_choice="auto",
                                    tools=[{"type": "function", "function": {"name": "f"}}])))
    assert request.engine_features() == ["tools", "tool_choice", "response_format"]
    assert request.uses_tools is True
    legacy = chat(encode(chat_body(functions=[{"name": "f"}], function_call="auto")))
    assert legacy.engine_features() == ["functions", "function_call"]
    assert completion(encode(completion_body())).engine_features() == []
    # values that ask for plain text need no tool-capable engine
    plain_text = chat(encode(chat_body(tool_choice="none", response_format={"type": "text"})))
    assert plain_text.engine_features() == [] and plain_text.uses_tools is False


def test_decode_request_checks_all_but_the_clients_limits() -> None:
    """What the worker and the engines' server decode: the same schema, without one client's limits."""
    big = schema.decode_request("chat", encode(chat_body(max_tokens=1_000_000)))
    assert isinstance(big, ChatCompletionRequest) and big.max_tokens == 1_000_000 and big.endpoint == "chat"
    assert isinstance(schema.decode_request("completions", encode(completion_body())), CompletionRequest)
    for endpoint, raw, code in (("chat", b"[]", "invalid_type"), ("chat", b"nope", "invalid_json"),
                                ("completions", encode(completion_body(prompt=["a", 1])), "invalid_type"),
                                ("embeddings", encode(chat_body()), "invalid_value")):
        with pytest.raises(ApiError) as info:
            schema.decode_request(endpoint, raw)
        assert info.value.status == 400 and info.value.code == code


RICH_CHAT: dict[str, Any] = {
    "model": "smollm2",
    "messages": [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}], "name": "ann"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": "[2, 2]"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
    ],
    "audio": None, "frequency_penalty": 0.5, "logit_bias": {"50256": -100}, "logprobs": True,
    "max_completion_tokens": 64, "max_tokens": 32, "metadata": {"team": "core"}, "modalities": ["text"], "n": 2,
    "parallel_tool_calls": False, "prediction": {"type": "content", "content": "4"}, "presence_penalty": -1,
    "prompt_cache_key": "k", "reasoning_effort": "low", "response_format": {"type": "text"},
    "safety_identifier": "u1", "seed": 7, "service_tier": "auto", "stop": ["\n"], "store": False,
    "stream": True, "stream_options": {"include_usage": True}, "temperature": 1, "tool_choice": "auto",
    "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
    "top_logprobs": 3, "top_p": 0.9, "user": "ann", "verbosity": "low", "web_search_options": {},
}

RICH_COMPLETION: dict[str, Any] = {
    "model": "smollm2", "prompt": [[1, 2, 3], [4]], "best_of": 3, "echo": True, "frequency_penalty": 0,
    "logit_bias": {"7": 5}, "logprobs": 2, "max_tokens": 16, "n": 2, "presence_penalty": 0.1, "seed": 1,
    "stop": "END", "stream": False, "stream_options": None, "suffix": "!", "temperature": 0.0, "top_p": 1,
    "user": "bob",
}


@pytest.mark.parametrize(("parse", "body"), [(chat, RICH_CHAT), (completion, RICH_COMPLETION)])
def test_to_body_gives_back_exactly_what_was_sent(parse: Parser, body: dict[str, Any]) -> None:
    forwarded = parse(encode(body)).to_body()
    assert forwarded == body
    # Byte for byte once keys are sorted: integers stay integers (an engine may tell `1` from `1.0`).
    assert msgspec.json.encode(forwarded, order="sorted") == msgspec.json.encode(body, order="sorted")


def test_validation_error_reads_msgspec_paths() -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.json.decode(b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}',
                            type=ChatCompletionRequest)
    err = validation_error(info.value)
    assert (err.status, err.code, err.param) == (400, "missing_field", "messages[0].content[0].text")
    assert err.message == "missing required field `text` in messages[0].content[0]"


# --- properties over generated requests ---

_text = st.text(max_size=12)
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False,
                                                                             allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_json_object = st.dictionaries(_text, _json_value, max_size=3)
_text_part = st.fixed_dictionaries({"type": st.just("text"), "text": _text})
_user_part = _text_part | st.fixed_dictionaries(
    {"type": st.just("image_url"), "image_url": st.fixed_dictionaries(
        {"url": _text}, optional={"detail": st.sampled_from(["auto", "low", "high"])})})
_tool_call = st.fixed_dictionaries({"id": _text, "type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": _text, "arguments": _text})})
_message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer"]),
                           "content": _text | st.lists(_text_part, max_size=2)}, optional={"name": _text}),
    st.fixed_dictionaries({"role": st.just("user"), "content": _text | st.lists(_user_part, max_size=3)},
                          optional={"name": _text}),
    st.fixed_dictionaries({"role": st.just("assistant")}, optional={
        "content": st.none() | _text, "tool_calls": st.lists(_tool_call, max_size=2), "refusal": _text}),
    st.fixed_dictionaries({"role": st.just("tool"), "tool_call_id": _text, "content": _text}),
)


def _number(lo: int, hi: int) -> st.SearchStrategy[int | float]:
    return st.integers(lo, hi) | st.floats(lo, hi)


_chat_request = st.fixed_dictionaries(
    {"model": _text, "messages": st.lists(_message, min_size=1, max_size=4)},
    optional={
        "temperature": _number(0, 2) | st.none(), "top_p": _number(0, 1), "presence_penalty": _number(-2, 2),
        "frequency_penalty": _number(-2, 2), "n": st.integers(1, 128), "top_logprobs": st.integers(0, 20),
        "max_tokens": st.integers(1, LIMIT), "max_completion_tokens": st.integers(1, LIMIT) | st.none(),
        "stream": st.booleans() | st.none(), "stream_options": st.fixed_dictionaries(
            {}, optional={"include_usage": st.booleans()}), "stop": _text | st.lists(_text, max_size=4),
        "seed": st.integers(-(2**63), 2**63 - 1), "user": _text, "logprobs": st.booleans(),
        "metadata": st.dictionaries(_text, _text, max_size=3), "logit_bias": st.dictionaries(
            st.integers(0, 10**6).map(str), st.integers(-100, 100), max_size=3),
        "tools": st.lists(_json_object, max_size=2), "tool_choice": _text | _json_object,
        "response_format": _json_object, "reasoning_effort": _text, "parallel_tool_calls": st.booleans(),
    },
)
_completion_request = st.fixed_dictionaries(
    {"model": _text, "prompt": _text | st.lists(_text, min_size=1) | st.lists(st.integers(0, 10**6), min_size=1)
     | st.lists(st.lists(st.integers(0, 10**6), min_size=1), min_size=1)},
    optional={"temperature": _number(0, 2), "echo": st.booleans(), "logprobs": st.integers(0, 5),
              "best_of": st.integers(0, 20), "suffix": _text | st.none(), "max_tokens": st.integers(1, LIMIT)},
)
_CHAT_FIELDS = {f.encode_name for f in msgspec.structs.fields(ChatCompletionRequest)}


def _raw(body: dict[str, Any], ascii_only: bool) -> bytes:
    return json.dumps(body, ensure_ascii=ascii_only).encode()


@settings(max_examples=300, deadline=None)
@given(body=_chat_request, ascii_only=st.booleans())
def test_any_valid_chat_request_re_encodes_to_an_equal_dict(body: dict[str, Any], ascii_only: bool) -> None:
    parsed = parse_chat_request(_raw(body, ascii_only), max_tokens_limit=LIMIT, max_prompt_chars=10**6)
    assert parsed.to_body() == body


@settings(max_examples=200, deadline=None)
@given(body=_completion_request, ascii_only=st.booleans())
def test_any_valid_completion_request_re_encodes_to_an_equal_dict(body: dict[str, Any],
                                                                  ascii_only: bool) -> None:
    parsed = parse_completion_request(_raw(body, ascii_only), max_tokens_limit=LIMIT, max_prompt_chars=10**6)
    assert parsed.to_body() == body


@settings(max_examples=300, deadline=None)
@given(body=_chat_request, key=_text.filter(lambda k: k not in _CHAT_FIELDS), data=st.data())
def test_any_extra_top_level_key_is_refused_by_name(body: dict[str, Any], key: str, data: st.DataObject) -> None:
    items = list(body.items())
    items.insert(data.draw(st.integers(0, len(items))), (key, data.draw(_json_value)))
    message = refused(lambda raw: parse_chat_request(raw, max_tokens_limit=LIMIT, max_prompt_chars=10**6),
                      encode(dict(items)), "unknown_field", key)
    assert f"`{key}`" in message


@settings(max_examples=300, deadline=None)
@given(body=_chat_request, ascii_only=st.booleans(), data=st.data())
def test_any_repeated_top_level_key_is_refused_by_name(body: dict[str, Any], ascii_only: bool,
                                                       data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(body)))
    repeat = json.dumps({key: body[key]}, ensure_ascii=ascii_only)[1:-1].encode()
    raw = _raw(body, ascii_only)[:-1] + b", " + repeat + b"}"
    message = refused(lambda raw: parse_chat_request(raw, max_tokens_limit=LIMIT, max_prompt_chars=10**6),
                      raw, "duplicate_key", key)
    assert f"`{key}`" in message
