"""A network whose workers front a real third-party OpenAI-compatible server (llama-cpp-python's own)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from cocoon.inference.embedded import MODEL_ID
from tests.netutil import Net, llama_cpp_server, localnet


@pytest.fixture(scope="module")
def upstream_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    base = tmp_path_factory.mktemp("upstream")
    with llama_cpp_server(base) as url, localnet(base / "state", engine=f"openai:{url}", workers=1) as net:
        yield net



def test_answers_and_usage_through_a_third_party_engine(upstream_net: Net) -> None:
    assert [m.id for m in upstream_net.sdk().models.list()] == [MODEL_ID]
    whole = upstream_net.sdk().chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0)
    assert whole.usage.prompt_tokens > 0 and 0 < whole.usage.completion_tokens <= 8


def test_stream_from_a_server_that_ignores_include_usage_is_still_metered(upstream_net: Net) -> None:
    chunks = list(upstream_net.sdk().chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Count to three."}], max_tokens=8, temperature=0,
        stream=True, stream_options={"include_usage": True}))
    generated = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == generated > 0
    assert chunks[-1].usage.prompt_tokens > 0  # counted at the server's tokenize endpoint before generating
    worker = upstream_net.by_role("worker")[0]["name"]
    assert upstream_net.stats(worker)["tokens"]["completion"] >= generated


def test_structured_output_passes_through_to_an_engine_that_supports_it(upstream_net: Net) -> None:
    answer = upstream_net.sdk().chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Give a JSON object with a key named a."}],
        response_format={"type": "json_object"}, max_tokens=24, temperature=0)
    text = answer.choices[0].message.content or ""
    # the grammar forces JSON: a cut-off answer still opens an object
    assert text.lstrip().startswith("{")
    if answer.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
