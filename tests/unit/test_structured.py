"""Structured output and tool calls without a model: what a request asks for, grammars, and reading calls back."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.core.errors import ApiError
from cocoon.inference.grammar import MAX_REPEAT, gbnf
from cocoon.inference.structured import CallArguments, CallReader, CallStart, parse_structure, with_instruction

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}


def test_plain_requests_ask_for_nothing() -> None:
    assert parse_structure({}) is None
    assert parse_structure({"response_format": {"type": "text"}, "tool_choice": "none"}) is None
    assert parse_structure({"tools": [WEATHER], "tool_choice": "none"}) is None


def test_response_formats() -> None:
    any_object = parse_structure({"response_format": {"type": "json_object"}})
    assert any_object is not None and any_object.schema == {"type": "object"} and not any_object.calls
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    strict = parse_structure({"response_format": {"type": "json_schema",
                                                  "json_schema": {"name": "s", "schema": schema, "strict": True}}})
    assert strict is not None and strict.schema == schema and json.dumps(schema, separators=(",", ":")) in \
        strict.instruction
    assert strict.param == "response_format"


def test_tool_choices() -> None:
    auto = parse_structure({"tools": [WEATHER, ADD]})
    assert auto is not None and auto.calls and auto.text_allowed and len(auto.schema["anyOf"]) == 2
    assert "get_weather" in auto.instruction and "add" in auto.instruction and auto.param == "tools"
    required = parse_structure({"tools": [WEATHER, ADD], "tool_choice": "required"})
    assert required is not None and required.calls and not required.text_allowed
    named = parse_structure({"tools": [WEATHER, ADD], "tool_choice": {"type": "function", "function": {"name": "add"}}})
    assert named is not None and not named.text_allowed
    assert named.schema["properties"]["name"] == {"const": "add"}
    assert named.schema["properties"]["arguments"] == ADD["function"]["parameters"]  # type: ignore[index]
    assert named.schema["additionalProperties"] is False
    # a function without parameters takes an empty object
    bare = parse_structure({"tools": [{"type": "function", "function": {"name": "now"}}], "tool_choice": "required"})
    assert bare is not None and bare.schema["properties"]["arguments"] == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"tool_choice": "auto"}, "tool_choice", "invalid_request"),
        ({"tools": []}, "tools", "invalid_request"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type", "unsupported_parameter"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name",
         "invalid_value"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name", "invalid_value"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
         "tools[0].function.parameters", "invalid_type"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "other"}}},
         "tool_choice.function.name", "invalid_value"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format",
         "unsupported_parameter"),
        ({"response_format": {"type": "regex"}}, "response_format.type", "invalid_value"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format.json_schema",
         "invalid_request"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": True}}},
         "response_format.json_schema.schema", "invalid_type"),
    ],
)
def test_bad_structures_name_the_field(body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_structure(body)
    assert (info.value.status, info.value.param, info.value.code) == (400, param, code)


def test_the_instruction_joins_the_system_message() -> None:
    user = {"role": "user", "content": "hi"}
    assert with_instruction([user], "do X") == [{"role": "system", "content": "do X"}, user]
    system = {"role": "system", "content": "be brief"}
    assert with_instruction([system, user], "do X") == [{"role": "system", "content": "be brief\n\ndo X"}, user]
    assert system == {"role": "system", "content": "be brief"}  # the caller's message is not rewritten


def test_grammars() -> None:
    named = parse_structure({"tools": [WEATHER], "tool_choice": "required"})
    assert named is not None
    text = gbnf(named)
    assert text.splitlines()[0] and "root ::=" in text and '"\\"get_weather\\""' in text and "text ::=" not in text
    auto = parse_structure({"tools": [WEATHER]})
    assert auto is not None
    assert "root ::= call | text" in gbnf(auto)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "items": {"type": "integer"}, "minItems": MAX_REPEAT + 1},
        {"type": "object", "properties": {"s": {"type": "string", "maxLength": 10**9}}},
        {"type": "string", "pattern": "^a{5000}$"},
        {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string", "minLength": 2000}}]},
    ],
)
def test_schemas_that_would_make_huge_grammars_are_refused(schema: dict[str, Any]) -> None:
    structure = parse_structure({"response_format": {"type": "json_schema", "json_schema": {"name": "n",
                                                                                             "schema": schema}}})
    assert structure is not None
    with pytest.raises(ApiError) as info:
        gbnf(structure)
    assert (info.value.status, info.value.param) == (400, "response_format") and str(MAX_REPEAT) in info.value.message


def test_a_schema_the_converter_cannot_read_is_a_400() -> None:
    structure = parse_structure({"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "mystery"}}}}}]})
    assert structure is not None
    with pytest.raises(ApiError) as info:
        gbnf(structure)
    assert (info.value.status, info.value.param) == (400, "tools")


CALL = '{ "name": "get_weather", "arguments": { "city": "Paris", "tags": {"a": "}"} } }'


def read(pieces: list[str]) -> tuple[list[Any], CallReader]:
    reader = CallReader()
    deltas = [d for piece in pieces for d in reader.feed(piece)] + reader.finish()
    return deltas, reader


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(CALL)), max_size=12))
def test_a_call_reads_the_same_however_it_is_cut(cuts: list[int]) -> None:
    bounds = sorted({0, len(CALL), *cuts})
    deltas, reader = read([CALL[a:b] for a, b in itertools.pairwise(bounds)])
    assert isinstance(deltas[0], CallStart) and deltas[0].name == "get_weather"
    assert all(isinstance(d, CallArguments) and d.text for d in deltas[1:])
    arguments = "".join(d.text for d in deltas[1:])
    assert arguments == '{ "city": "Paris", "tags": {"a": "}"} }'
    assert json.loads(arguments) == {"city": "Paris", "tags": {"a": "}"}}
    assert reader.complete and reader.tool_call() == {
        "id": reader.id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}


def test_a_call_cut_by_the_token_limit() -> None:
    deltas, reader = read(['{"name": "add", "arguments": {"a": 1', ', "b"'])
    assert not reader.complete and "".join(d.text for d in deltas[1:]) == '{"a": 1, "b"'
    nameless, reader = read(['{"name": "ad'])
    assert nameless == [] and reader.tool_call() is None
