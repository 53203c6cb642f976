"""Engines without a model: fake, the HTTP server, the OpenAI-upstream client, and the official SDK."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import openai
import pytest
from aiohttp import web

from cocoon.core.errors import ApiError
from cocoon.core.usage import Usage
from cocoon.inference import openai_upstream
from cocoon.inference.base import Engine
from cocoon.inference.factory import make_engine
from cocoon.inference.fake import FakeEngine
from cocoon.inference.openai_upstream import OpenAIUpstreamEngine
from cocoon.inference.server import serve
from cocoon.openai import schema, sse
from cocoon.openai.schema import Endpoint, OpenAIRequest

MODEL = "fake-model"


def chat(content: str = "tell me something", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def streamed(**extra: Any) -> dict[str, Any]:
    return {"stream": True, "stream_options": {"include_usage": True}, **extra}


def typed(endpoint: Endpoint, body: dict[str, Any]) -> OpenAIRequest:
    """The body as engines get it: decoded by the schema (which refuses what is malformed)."""
    return schema.decode_request(endpoint, msgspec.json.encode(body))


async def complete(engine: Engine, endpoint: Endpoint, body: dict[str, Any]) -> bytes:
    return await engine.complete(typed(endpoint, body))


def stream(engine: Engine, endpoint: Endpoint, body: dict[str, Any]) -> AsyncIterator[bytes]:
    return engine.stream(typed(endpoint, body))


async def collect(engine: Engine, endpoint: Endpoint, body: dict[str, Any]) -> list[dict[str, Any]]:
    return [msgspec.json.decode(p) async for p in stream(engine, endpoint, body)]


def text_of(chunks: list[dict[str, Any]]) -> str:
    parts = []
    for chunk in chunks:
        for choice in chunk["choices"]:
            parts.append(choice["delta"].get("content") or "" if "delta" in choice else choice["text"])
    return "".join(parts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_until_still(counter: Any, settle_s: float = 0.2) -> int:
    """The value of `counter()` once it stops moving (bounded: a few settle periods)."""
    value = counter()
    for _ in range(10):
        await asyncio.sleep(settle_s)
        if counter() == value:
            return value
        value = counter()
    raise AssertionError("generation did not stop")


# ---------------------------------------------------------------- fake engine


async def test_fake_is_deterministic_and_depends_on_the_prompt() -> None:
    engine = FakeEngine()
    first = msgspec.json.decode(await complete(engine, "chat", chat("one prompt")))
    again = msgspec.json.decode(await complete(engine, "chat", chat("one prompt")))
    other = msgspec.json.decode(await complete(engine, "chat", chat("another prompt")))
    text = first["choices"][0]["message"]["content"]
    assert text == again["choices"][0]["message"]["content"]
    assert text != other["choices"][0]["message"]["content"]
    assert len(text.split()) == 16
    assert first["object"] == "chat.completion" and first["id"].startswith("chatcmpl-")
    assert first["model"] == MODEL and isinstance(first["created"], int)
    assert first["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 16,
        "total_tokens": 18,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert first["choices"][0]["finish_reason"] == "stop"


async def test_a_sampling_fake_differs_run_by_run_only_where_the_request_samples() -> None:
    engine = FakeEngine(sample=True, reply_tokens=12)

    async def texts(**extra: Any) -> set[str]:
        answers = [msgspec.json.decode(await complete(engine, "chat", chat("one prompt", **extra))) for _ in range(4)]
        return {a["choices"][0]["message"]["content"] for a in answers}

    assert len(await texts(temperature=0.8)) > 1  # 30 words ** 12: four runs never all agree
    assert len(await texts()) > 1  # unset is 1.0
    assert len(await texts(temperature=0)) == 1
    assert len(await texts(temperature=0.8, seed=3)) == 1
    assert await texts(temperature=0) == {msgspec.json.decode(await complete(FakeEngine(reply_tokens=12), "chat", chat(
        "one prompt")))["choices"][0]["message"]["content"]}


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_fake_stream_and_complete_agree(endpoint: Endpoint) -> None:
    engine = FakeEngine()
    body = chat() if endpoint == "chat" else {"model": MODEL, "prompt": "tell me something"}
    whole = msgspec.json.decode(await complete(engine, endpoint, body))
    chunks = await collect(engine, endpoint, {**body, **streamed()})
    choice = whole["choices"][0]
    assert text_of(chunks) == (choice["message"]["content"] if endpoint == "chat" else choice["text"])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    expected = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
    assert {c["object"] for c in chunks} == {expected}
    assert len({c["id"] for c in chunks}) == 1
    if endpoint == "chat":
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


async def test_usage_chunk_only_when_asked() -> None:
    chunks = await collect(FakeEngine(), "chat", chat(stream=True))
    assert all(c["choices"] and "usage" not in c for c in chunks)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_the_prompt_is_counted_before_the_first_token(endpoint: Endpoint) -> None:
    """Issue 15 item 4: what a stream broken off after its first token is charged for its prompt."""
    counted: list[Usage] = []
    seen_before_first: list[bool] = []
    body = {**(chat("four words of prompt") if endpoint == "chat" else
               {"model": MODEL, "prompt": "four words of prompt"}), **streamed()}
    async for _ in FakeEngine().stream(typed(endpoint, body), counted.append):
        seen_before_first.append(bool(counted))
    assert counted == [Usage(prompt_tokens=4)] and all(seen_before_first)


async def test_fake_respects_max_tokens() -> None:
    engine = FakeEngine(reply_tokens=16)
    for field in ("max_tokens", "max_completion_tokens"):
        answer = msgspec.json.decode(await complete(engine, "chat", chat(**{field: 5})))
        assert answer["usage"]["completion_tokens"] == 5
        assert answer["choices"][0]["finish_reason"] == "length"
        assert len(answer["choices"][0]["message"]["content"].split()) == 5


async def test_fake_token_bytes_are_exact() -> None:
    engine = FakeEngine(reply_tokens=50, token_bytes=128)
    chunks = await collect(engine, "chat", chat(**streamed()))
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert len(pieces) == 50
    assert {len(p.encode()) for p in pieces} == {128}


async def test_fake_paces_tokens() -> None:
    engine = FakeEngine(reply_tokens=10, tokens_per_s=200)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await complete(engine, "chat", chat())
    assert 10 / 200 <= loop.time() - start < 1.0


async def test_closing_the_stream_stops_the_fake() -> None:
    engine = FakeEngine(reply_tokens=1000, tokens_per_s=200)
    answer = stream(engine, "chat", chat(**streamed()))
    for _ in range(4):  # role chunk and three pieces
        await anext(answer)
    await answer.aclose()
    stopped = await wait_until_still(lambda: engine.generated_tokens)
    assert stopped <= 4


async def test_stop_strings_cut_the_answer_everywhere() -> None:
    engine = FakeEngine()
    full = msgspec.json.decode(await complete(engine, "chat", chat()))["choices"][0]["message"]["content"]
    words = full.split()
    stop = words[2][-2:] + " " + words[3][:2]  # spans two pieces
    expected = full[: full.index(stop)]
    whole = msgspec.json.decode(await complete(engine, "chat", chat(stop=[stop, "never-there"])))
    assert whole["choices"][0]["message"]["content"] == expected
    assert whole["choices"][0]["finish_reason"] == "stop"
    chunks = await collect(engine, "chat", chat(stop=stop, **streamed()))
    assert text_of(chunks) == expected
    assert chunks[-1]["usage"] == whole["usage"]
    assert whole["usage"]["completion_tokens"] == 4  # the token that completed the stop string counts


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"n": 2}, "n"),
    ],
)
async def test_unsupported_features_are_refused(extra: dict[str, Any], param: str) -> None:
    engine = FakeEngine()
    with pytest.raises(ApiError) as info:
        await complete(engine, "chat", chat(**extra))
    assert info.value.status == 400
    assert info.value.code == "unsupported_parameter" and info.value.param == param
    assert f"does not support `{param}`" in info.value.message
    with pytest.raises(ApiError):
        await anext(stream(engine, "chat", chat(**extra, **streamed())))


async def test_harmless_values_of_unsupported_fields_pass() -> None:
    body = chat(response_format={"type": "text"}, tool_choice="none", n=1, logprobs=False)
    assert msgspec.json.decode(await complete(FakeEngine(), "chat", body))["choices"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (chat() | {"model": "other"}, 404, "model"),
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
        (chat() | {"messages": []}, 400, "messages"),
        (chat() | {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
        (chat(max_tokens=0), 400, "max_tokens"),
        (chat(temperature=3), 400, "temperature"),
        (chat(temperature=True), 400, "temperature"),
        (chat(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ],
)
async def test_bad_requests_name_the_field(body: dict[str, Any], status: int, param: str) -> None:
    with pytest.raises(ApiError) as info:
        await complete(FakeEngine(), "chat", body)
    assert (info.value.status, info.value.param) == (status, param)


async def test_text_parts_and_prompt_lists_are_accepted() -> None:
    engine = FakeEngine()
    parts = {"role": "user", "content": [{"type": "text", "text": "tell me "}, {"type": "text", "text": "something"}]}
    as_parts = msgspec.json.decode(await complete(engine, "chat", chat() | {"messages": [parts]}))
    as_text = msgspec.json.decode(await complete(engine, "chat", chat()))
    assert as_parts["choices"][0]["message"] == as_text["choices"][0]["message"]
    listed = msgspec.json.decode(await complete(engine, "completions", {"model": MODEL, "prompt": ["a b"]}))
    assert listed["usage"]["prompt_tokens"] == 2


def test_factory() -> None:
    assert isinstance(make_engine("fake", reply_tokens=3), FakeEngine)
    upstream = make_engine("openai:http://127.0.0.1:8080/v1/")
    assert isinstance(upstream, OpenAIUpstreamEngine) and upstream.base_url == "http://127.0.0.1:8080/v1"
    for bad in ("vllm", "openai:127.0.0.1:8080", ""):
        with pytest.raises(ValueError, match="engine"):
            make_engine(bad)


# ---------------------------------------------------------------- SSE parsing


def test_sse_decoder_survives_any_chunking() -> None:
    stream = (
        b": keep-alive\n\n"
        b"data: {\"a\": 1}\r\n\r\n"
        b"event: message\ndata:{\"b\": 2}\n\n"
        b"data: line one\ndata: line two\n\n"
        b"data: [DONE]\n\n"
    )
    expected = [b'{"a": 1}', b'{"b": 2}', b"line one\nline two", b"[DONE]"]
    for size in range(1, len(stream) + 1):
        decoder = sse.SSEDecoder()
        events = []
        for i in range(0, len(stream), size):
            events += decoder.feed(stream[i : i + size])
        assert events == expected, size


def test_what_sse_writes_its_decoder_reads() -> None:
    payloads = [b'{"a": 1}', b'{"b": "x\\ny"}']
    written = b"".join(sse.event(p) for p in payloads) + sse.DONE
    assert sse.SSEDecoder().feed(written) == [*payloads, sse.DONE_PAYLOAD]


# ---------------------------------------------------------------- HTTP: server.py + OpenAIUpstreamEngine + SDK


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeEngine, OpenAIUpstreamEngine, str]]:
    fake = FakeEngine(tokens_per_s=0)
    runner, port = await serve(fake)
    base = f"http://127.0.0.1:{port}/v1"
    upstream = OpenAIUpstreamEngine(base, api_key="secret")
    await upstream.start()
    try:
        yield fake, upstream, base
    finally:
        await upstream.close()
        await runner.cleanup()


async def test_upstream_relays_the_served_engine(served: tuple[FakeEngine, OpenAIUpstreamEngine, str]) -> None:
    fake, upstream, _ = served
    assert await upstream.models() == [MODEL]
    for endpoint, body in (("chat", chat()), ("completions", {"model": MODEL, "prompt": "tell me something"})):
        direct = msgspec.json.decode(await complete(fake, endpoint, body))
        relayed = msgspec.json.decode(await complete(upstream, endpoint, body))
        assert relayed["choices"] == direct["choices"] and relayed["usage"] == direct["usage"]
        chunks = await collect(upstream, endpoint, {**body, **streamed()})
        assert text_of(chunks) == text_of(await collect(fake, endpoint, {**body, **streamed()}))
        assert chunks[-1]["usage"] == direct["usage"]


async def test_upstream_maps_http_errors(served: tuple[FakeEngine, OpenAIUpstreamEngine, str]) -> None:
    _, upstream, _ = served
    with pytest.raises(ApiError) as info:
        await complete(upstream, "chat", chat() | {"model": "missing"})
    assert info.value.status == 404 and info.value.code == "model_not_found"
    assert "`missing` does not exist" in info.value.message
    # refused before the first event: a real HTTP error, not a broken stream
    with pytest.raises(ApiError) as info:
        await anext(stream(upstream, "chat", chat(tools=[{"type": "function"}], **streamed())))
    assert info.value.status == 400 and info.value.param == "tools"


async def test_server_answers_errors_in_openai_shape(served: tuple[FakeEngine, OpenAIUpstreamEngine, str]) -> None:
    _, upstream, base = served
    session = upstream._http()
    async with session.post(base + "/chat/completions", data=b"{nope") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_json"
    async with session.get(base + "/nowhere") as resp:
        assert resp.status == 404
        assert "/v1/nowhere" in (await resp.json())["error"]["message"]


async def test_closing_the_upstream_stream_stops_the_engine(
    served: tuple[FakeEngine, OpenAIUpstreamEngine, str],
) -> None:
    fake, upstream, _ = served
    fake.reply_tokens, fake.tokens_per_s = 1000, 200
    answer = stream(upstream, "chat", chat(**streamed()))
    for _ in range(4):
        await anext(answer)
    await answer.aclose()
    stopped = await wait_until_still(lambda: fake.generated_tokens)
    assert stopped < 50


async def test_upstream_unreachable_is_502_without_its_address(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 15 item 17: where the engine runs is the operator's to know, not the client's."""
    port = free_port()
    upstream = OpenAIUpstreamEngine(f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(ApiError) as info:
            await upstream.models()
        assert info.value.status == 502 and info.value.code == "engine_unavailable"
        with pytest.raises(ApiError) as info:
            await anext(stream(upstream, "chat", chat(**streamed())))
        assert info.value.code == "engine_unavailable"
        assert str(port) not in info.value.message and "127.0.0.1" not in info.value.message
        assert "Error" not in info.value.message  # no exception repr either
    finally:
        await upstream.close()
    logged = [r for r in caplog.records if r.name == "cocoon.inference.openai_upstream"]
    assert any(f"127.0.0.1:{port}" in r.fields["engine_url"] for r in logged)  # type: ignore[attr-defined]


async def hand_written_engine(routes: dict[str, Any]) -> tuple[web.AppRunner, OpenAIUpstreamEngine]:
    """An engine of a test's own (POST handlers by path) on 127.0.0.1, and the upstream engine that reaches it."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, OpenAIUpstreamEngine(f"http://127.0.0.1:{runner.addresses[0][1]}/v1")


async def test_upstream_reads_awkward_streams_and_plain_errors() -> None:
    """A hand-written engine: lines split across writes, comments, CRLF, a mid-stream error, text errors.

    Its 4xx answers reach the client with their own words (they are about the request); its failures do not."""

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        pieces = (b": ping\n", b"\nda", b'ta: {"x"', b": 1}\r\n", b'\r\ndata: {"error": {"message": "boom"}}\n\n')
        for piece in pieces:
            await resp.write(piece)
            await asyncio.sleep(0.01)
        return resp

    async def plain_error(request: web.Request) -> web.Response:
        body = await request.json()
        if body["prompt"] == "refuse":
            return web.Response(status=400, text="your prompt is refused " * 50)
        return web.Response(status=503, text="overloaded " * 100)

    runner, upstream = await hand_written_engine({"/v1/chat/completions": events, "/v1/completions": plain_error})
    try:
        answer = stream(upstream, "chat", chat(**streamed()))
        assert await anext(answer) == b'{"x": 1}'
        # the engine failing speaks of itself: the client gets a generic message (issue 15 item 17)
        with pytest.raises(ApiError) as info:
            await anext(answer)
        assert info.value.status == 502 and info.value.code == "engine_error" and "boom" not in info.value.message
        with pytest.raises(ApiError) as info:
            await complete(upstream, "completions", {"model": MODEL, "prompt": "x"})
        assert info.value.status == 503 and info.value.code == "engine_error"
        assert "overloaded" not in info.value.message
        with pytest.raises(ApiError) as info:
            await complete(upstream, "completions", {"model": MODEL, "prompt": "refuse"})
        assert info.value.status == 400 and info.value.message.startswith("your prompt is refused")
        assert len(info.value.message) <= 501
    finally:
        await upstream.close()
        await runner.cleanup()


async def test_official_sdk_talks_to_the_server(served: tuple[FakeEngine, OpenAIUpstreamEngine, str]) -> None:
    fake, _, base = served
    client = openai.AsyncOpenAI(base_url=base, api_key="x", max_retries=0, timeout=30)
    try:
        assert [m.id async for m in client.models.list()] == [MODEL]
        messages: Any = [{"role": "user", "content": "tell me something"}]
        answer = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
        assert answer.choices[0].finish_reason == "length"
        assert answer.usage is not None and answer.usage.completion_tokens == 8
        stream = await client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=8, stream=True, stream_options={"include_usage": True}
        )
        pieces, usage = [], None
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
            else:
                usage = chunk.usage
        assert "".join(pieces) == answer.choices[0].message.content
        assert usage == answer.usage
        completion = await client.completions.create(model=MODEL, prompt="tell me something")
        assert completion.choices[0].text and completion.usage is not None
        assert completion.usage.prompt_tokens == 3
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="missing", messages=messages)
        assert "`missing` does not exist" in info.value.message
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model=MODEL, messages=messages, n=3)
    finally:
        await client.close()
    assert fake.generated_tokens == 8 + 8 + 16


async def test_a_stream_ended_before_its_body_keeps_the_engine_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine that says [DONE] a moment before its HTTP body ends: each answer used to close the connection
    (the next request paid a new connect at concurrency 1); now its last bytes are read in the background and the
    connection is reused. One that never ends its body after [DONE] loses the connection after the wait."""
    monkeypatch.setattr(openai_upstream, "_FINISH_WAIT_S", 0.3)
    peers: list[object] = []
    hold = {"s": 0.05}

    async def events(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n')
        await resp.write(b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        await asyncio.sleep(hold["s"])  # the body's end follows later
        return resp

    runner, upstream = await hand_written_engine({"/v1/chat/completions": events})
    try:
        for _ in range(3):
            assert len(await collect(upstream, "chat", chat(**streamed()))) == 2
            await asyncio.sleep(0.1)  # the body's end arrived meanwhile
        assert len(peers) == 3 and len(set(peers)) == 1
        hold["s"] = 1.0  # an engine that holds its body open after [DONE], past the wait
        assert len(await collect(upstream, "chat", chat(**streamed()))) == 2
        await asyncio.sleep(0.5)  # past the wait: that connection was closed, not pooled
        assert len(await collect(upstream, "chat", chat(**streamed()))) == 2
        assert len(set(peers)) == 2 and peers[-1] != peers[-2]
    finally:
        await upstream.close()
        await runner.cleanup()
