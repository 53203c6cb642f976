"""The embedded default: a real small language model behind the whole network, as `make up` runs it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

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
