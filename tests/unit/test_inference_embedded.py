"""The real bundled model (SmolLM2-135M via llama.cpp), and llama-cpp-python's own server as an upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest

from cocoon.core.errors import ApiError
from cocoon.inference.embedded import MODEL_ID, EmbeddedEngine, default_model_path
from cocoon.inference.openai_upstream import OpenAIUpstreamEngine
from cocoon.openai import schema
from cocoon.openai.schema import Endpoint, OpenAIRequest
from tests.netutil import llama_cpp_server

QUESTION = "What is the capital of France? Answer in one sentence."


def typed(endpoint: Endpoint, body: dict[str, Any]) -> OpenAIRequest:
    return schema.decode_request(endpoint, msgspec.json.encode(body))


def chat(content: str = QUESTION, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], "temperature": 0, **extra}


def streamed(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "stream": True, "stream_options": {"include_usage": True}}


async def run_stream(engine: Any, endpoint: Endpoint, body: dict[str, Any]) -> tuple[str, Any, list[Any]]:
    """(text, usage, chunks) of a streamed answer."""
    chunks = [msgspec.json.decode(p) async for p in engine.stream(typed(endpoint, streamed(body)))]
    text = "".join(
        (c["delta"].get("content") or "") if endpoint == "chat" else c["text"] for ch in chunks for c in ch["choices"]
    )
    return text, chunks[-1].get("usage"), chunks


async def run_complete(engine: Any, endpoint: Endpoint, body: dict[str, Any]) -> tuple[str, Any, str]:
    """(text, usage, finish_reason) of a whole answer."""
    answer = msgspec.json.decode(await engine.complete(typed(endpoint, body)))
    choice = answer["choices"][0]
    text = choice["message"]["content"] if endpoint == "chat" else choice["text"]
    return text, answer["usage"], choice["finish_reason"]


@pytest.fixture(scope="module")
def engine() -> Iterator[EmbeddedEngine]:
    # the model is not bound to an event loop, so one load serves every test's loop
    engine = EmbeddedEngine()
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())


def test_default_model_path_names_the_bundled_file() -> None:
    assert default_model_path().endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


async def test_chat_answers(engine: EmbeddedEngine) -> None:
    assert await engine.models() == [MODEL_ID]
    text, usage, finish = await run_complete(engine, "chat", chat(max_tokens=60))
    assert "Paris" in text
    assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 60
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert finish in ("stop", "length")


async def test_stream_and_complete_agree_exactly(engine: EmbeddedEngine) -> None:
    body = chat("Name three colours of the rainbow.", max_tokens=40)
    first, first_usage, _ = await run_complete(engine, "chat", body)
    text, usage, chunks = await run_stream(engine, "chat", body)
    whole, whole_usage, finish = await run_complete(engine, "chat", body)
    assert text == whole == first
    assert usage == whole_usage == first_usage
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0  # every prompt is evaluated afresh
    assert chunks[-2]["choices"][0]["finish_reason"] == finish


async def test_prompt_cache_reuse_is_reported_as_cached_tokens() -> None:
    engine = EmbeddedEngine(reuse_prompt_cache=True)
    await engine.start()
    try:
        body = chat("Name three colours of the rainbow.", max_tokens=4)
        _, cold, _ = await run_complete(engine, "chat", body)
        _, warm, _ = await run_complete(engine, "chat", body)
    finally:
        await engine.close()
    assert cold["prompt_tokens_details"]["cached_tokens"] == 0
    # llama.cpp re-evaluates the last prompt token to get fresh logits
    assert warm["prompt_tokens_details"]["cached_tokens"] == warm["prompt_tokens"] - 1


async def test_max_tokens_ends_with_length(engine: EmbeddedEngine) -> None:
    text, usage, finish = await run_complete(engine, "chat", chat("Write a long story about a cat.", max_tokens=5))
    assert text and usage["completion_tokens"] == 5 and finish == "length"
    _, usage, chunks = await run_stream(engine, "chat", chat("Write a long story about a cat.", max_tokens=5))
    assert usage["completion_tokens"] == 5 and chunks[-2]["choices"][0]["finish_reason"] == "length"


async def test_completions_endpoint(engine: EmbeddedEngine) -> None:
    body = {"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    text, usage, finish = await run_complete(engine, "completions", body)
    assert "Paris" in text and usage["completion_tokens"] == 8 and finish == "length"
    streamed_text, streamed_usage, chunks = await run_stream(engine, "completions", body)
    assert streamed_text == text and streamed_usage["completion_tokens"] == 8
    assert {c["object"] for c in chunks} == {"text_completion"}


async def test_multibyte_characters_are_never_split(engine: EmbeddedEngine) -> None:
    # byte-level BPE splits these characters over several tokens
    body = {"model": MODEL_ID, "prompt": "日本の首都は", "max_tokens": 12, "temperature": 0}
    _, _, chunks = await run_stream(engine, "completions", body)
    pieces = [c["choices"][0]["text"] for c in chunks if c["choices"]]
    assert any(ord(ch) > 0x3000 for piece in pieces for ch in piece)
    assert not any("\ufffd" in piece for piece in pieces)


async def test_stop_strings_and_seeds(engine: EmbeddedEngine) -> None:
    body = {"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    text, _, _ = await run_complete(engine, "completions", body)
    stop = text.strip().split()[0][:3]
    cut, _, finish = await run_complete(engine, "completions", {**body, "stop": [stop]})
    assert cut == text[: text.index(stop)] and finish == "stop"
    sampled = {**body, "temperature": 1.0, "seed": 1234, "max_tokens": 16}
    first, _, _ = await run_complete(engine, "completions", sampled)
    again, _, _ = await run_complete(engine, "completions", sampled)
    assert first == again


async def test_refusals(engine: EmbeddedEngine) -> None:
    with pytest.raises(ApiError) as info:
        await engine.complete(typed("chat", chat(functions=[{"name": "f"}])))
    assert info.value.status == 400 and info.value.code == "unsupported_parameter" and info.value.param == "functions"
    with pytest.raises(ApiError) as info:
        await anext(engine.stream(typed("chat", streamed(chat() | {"model": "gpt-4o"}))))
    assert info.value.status == 404 and info.value.code == "model_not_found"
    with pytest.raises(ApiError) as info:
        await engine.complete(typed("completions", {"model": MODEL_ID, "prompt": "word " * 3000}))
    assert info.value.status == 400 and info.value.code == "context_length_exceeded"
    # every refusal names its code: an SDK branches on it
    with pytest.raises(ApiError) as info:
        await engine.complete(typed("completions", {"model": MODEL_ID, "prompt": ""}))
    assert (info.value.status, info.value.code, info.value.param) == (400, "invalid_value", "prompt")


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}


def tool_call_of(chunks: list[Any]) -> tuple[str, str, str]:
    """(id, name, arguments) reassembled from streamed tool-call deltas, as an SDK does."""
    ids, names, arguments = "", "", ""
    for chunk in chunks:
        for choice in chunk["choices"]:
            for delta in choice["delta"].get("tool_calls") or ():
                assert delta["index"] == 0
                ids += delta.get("id") or ""
                names += delta.get("function", {}).get("name") or ""
                arguments += delta.get("function", {}).get("arguments") or ""
    return ids, names, arguments


async def test_json_schema_answers_follow_the_schema(engine: EmbeddedEngine) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                               "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    body = chat("Name a large city and its population.", max_tokens=60,
                response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema,
                                                                        "strict": True}})
    text, usage, finish = await run_complete(engine, "chat", body)
    answer = json.loads(text)
    assert set(answer) == {"city", "population"} and isinstance(answer["population"], int)
    assert isinstance(answer["city"], str) and len(answer["city"]) <= 24 and finish == "stop"
    streamed_text, streamed_usage, _ = await run_stream(engine, "chat", body)
    assert streamed_text == text and streamed_usage == usage
    any_object, _, _ = await run_complete(engine, "chat", chat("Describe a cat.", max_tokens=60,
                                                                response_format={"type": "json_object"}))
    assert any_object.lstrip().startswith("{")


async def test_a_forced_tool_call_streams_the_same_arguments(engine: EmbeddedEngine) -> None:
    body = chat("What is the weather in Paris?", max_tokens=60, tools=[WEATHER],
                tool_choice={"type": "function", "function": {"name": "get_weather"}})
    answer = msgspec.json.decode(await engine.complete(typed("chat", body)))
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("celsius", "fahrenheit")
    _, usage, chunks = await run_stream(engine, "chat", body)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    call_id, name, streamed_arguments = tool_call_of(chunks)
    assert call_id.startswith("call_") and name == "get_weather"
    assert streamed_arguments == call["function"]["arguments"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls" and usage == answer["usage"]


async def test_auto_tool_choice_may_answer_in_text_and_reads_tool_history(engine: EmbeddedEngine) -> None:
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees and sunny"},
    ]
    body = {**chat(max_tokens=30), "messages": history, "tools": [WEATHER]}
    answer = msgspec.json.decode(await engine.complete(typed("chat", body)))
    choice = answer["choices"][0]
    # either a text answer or a call: never both, never neither
    if choice["message"].get("tool_calls"):
        assert choice["message"]["content"] is None and choice["finish_reason"] in ("tool_calls", "length")
    else:
        assert choice["message"]["content"] and choice["finish_reason"] in ("stop", "length")


async def test_a_schema_too_large_to_constrain_is_refused(engine: EmbeddedEngine) -> None:
    schema = {"type": "array", "items": {"type": "string"}, "minItems": 10**7}
    with pytest.raises(ApiError) as info:
        await engine.complete(typed("chat", chat(response_format={"type": "json_schema", "json_schema": {
            "name": "n", "schema": schema}})))
    assert (info.value.status, info.value.param) == (400, "response_format")


async def test_closing_the_stream_stops_generation(engine: EmbeddedEngine) -> None:
    body = streamed({"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 1000, "temperature": 0})
    stream = engine.stream(typed("completions", body))
    for _ in range(5):
        await anext(stream)
    count_at_close = engine.generated_tokens
    await stream.aclose()
    # the next request waits for the model thread: it starts only once the abandoned one has stopped
    _, usage, _ = await run_complete(engine, "completions", {**body, "stream": False, "max_tokens": 1})
    assert usage["completion_tokens"] == 1
    # counted, not timed (a loaded machine slows both): 1000 tokens would have been generated had it gone on
    assert engine.generated_tokens - count_at_close <= 3  # at most the token in flight, plus the new one


# ---------------------------------------------------------------- llama-cpp-python's server as an upstream


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with llama_cpp_server(tmp_path_factory.mktemp("llama_server")) as url:
        yield url


@pytest.fixture
async def llama_upstream(llama_server: str) -> AsyncIterator[OpenAIUpstreamEngine]:
    upstream = OpenAIUpstreamEngine(llama_server, timeout_s=60)
    await upstream.start()
    try:
        yield upstream
    finally:
        await upstream.close()


async def test_llama_cpp_server_as_upstream(llama_upstream: OpenAIUpstreamEngine) -> None:
    assert await llama_upstream.models() == [MODEL_ID]
    body = chat(max_tokens=12)
    text, usage, chunks = await run_stream(llama_upstream, "chat", body)
    assert text and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    # Found here: llama-cpp-python 0.3.36's server ignores stream_options.include_usage and never streams
    # usage, so whoever meters a stream from it must count tokens itself.
    assert usage is None and all("usage" not in c for c in chunks)
    whole, whole_usage, _ = await run_complete(llama_upstream, "chat", body)
    assert whole == text
    assert whole_usage["prompt_tokens"] > 5 and 0 < whole_usage["completion_tokens"] <= 12


async def test_llama_cpp_server_errors_keep_their_status(llama_upstream: OpenAIUpstreamEngine) -> None:
    # a body that skipped the schema (replace() does not validate), as only a bug could send
    broken = msgspec.structs.replace(typed("chat", chat()), messages="not a list")
    with pytest.raises(ApiError) as info:
        await llama_upstream.complete(broken)
    # it reports request validation failures as 500s: the status is kept, its words (which may quote the
    # request) stay in its own log (issue 15 item 17)
    assert info.value.status == 500 and info.value.code == "engine_error"
    assert "validation error" not in info.value.message
