"""The embedded default: a real small language model behind the whole network, as `make up` runs it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel, Field

from tests.netutil import Net, localnet

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def embedded_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    state: Path = tmp_path_factory.mktemp("embedded") / "state"
    with localnet(state, engine="embedded", workers=2) as net:
        yield net



def test_real_model_answers_through_the_network(embedded_net: Net) -> None:
    assert [m.id for m in embedded_net.sdk().models.list()] == [MODEL]
    answer = embedded_net.sdk().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=24,
        temperature=0)
    text = answer.choices[0].message.content or ""
    assert len(text.strip()) > 0
    assert answer.usage.prompt_tokens > 5 and 0 < answer.usage.completion_tokens <= 24
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_streamed_and_whole_answers_are_metered_identically(embedded_net: Net) -> None:
    client = embedded_net.sdk()
    messages = [{"role": "user", "content": "Name three colours."}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    # and the worker-side meters agree with what the client was told
    totals = [embedded_net.stats(w["name"])["tokens"]["completion"] for w in embedded_net.by_role("worker")]
    assert sum(totals) >= 2 * whole.usage.completion_tokens


def test_max_tokens_and_legacy_completions(embedded_net: Net) -> None:
    done = embedded_net.sdk().completions.create(model=MODEL, prompt="The sky is", max_tokens=4, temperature=0)
    assert done.usage.completion_tokens <= 4
    assert done.choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize("stream", [False, True])
def test_an_error_raised_by_the_worker_reaches_the_sdk_with_its_param(embedded_net: Net, stream: bool) -> None:
    """The client's schema accepts `n=2`; the embedded engine on the worker refuses it, naming the field."""
    with pytest.raises(openai.BadRequestError) as refused:
        embedded_net.sdk().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2, max_tokens=4, stream=stream,
            extra_headers={"x-request-id": f"n2-{stream}"})
    error = refused.value
    assert (error.status_code, error.code, error.param) == (400, "unsupported_parameter", "n")
    assert "does not support `n`" in error.message
    assert error.response.headers["x-request-id"] == f"n2-{stream}"


# ---------------------------------------------------------------- structured output and tools, through the SDK


class City(BaseModel):
    name: str = Field(max_length=24)
    population: int


class Weather(BaseModel):
    city: str = Field(max_length=24)
    unit: Literal["celsius", "fahrenheit"]


def test_a_json_schema_answer_parses_and_validates(embedded_net: Net) -> None:
    """`chat.completions.parse` sends a strict json_schema and validates the answer against the model class."""
    done = embedded_net.sdk().chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Name a large city and its population."}],
        response_format=City, max_tokens=60, temperature=0)
    city = done.choices[0].message.parsed
    assert isinstance(city, City) and city.name and done.choices[0].finish_reason == "stop"
    assert City.model_validate_json(done.choices[0].message.content or "") == city


def test_a_forced_tool_call_has_arguments_that_validate(embedded_net: Net) -> None:
    done = embedded_net.sdk().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[openai.pydantic_function_tool(Weather, name="get_weather")],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=60, temperature=0)
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    Weather.model_validate_json(call.function.arguments)
    assert done.usage is not None and done.usage.completion_tokens <= 60


def test_streamed_tool_call_deltas_reassemble(embedded_net: Net) -> None:
    client = embedded_net.sdk()
    request: dict[str, Any] = dict(
        model=MODEL, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[openai.pydantic_function_tool(Weather, name="get_weather")], tool_choice="required",
        max_tokens=60, temperature=0)
    whole = client.chat.completions.create(**request)
    chunks = list(client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert len(deltas) > 2 and {d.index for d in deltas} == {0}
    assert deltas[0].id and deltas[0].function and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert Weather.model_validate_json(arguments)
    [call] = whole.choices[0].message.tool_calls or []
    assert arguments == call.function.arguments  # the same generation, streamed or not
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
