"""The prompt of a stream from an OpenAI-compatible server is known before its first token (issue 15 item 4):
from the usage a server like vLLM puts in every chunk when asked, from the tokenize count of a server like
llama-cpp-python's, and not at all from one that offers neither; per-chunk usage never reaches the caller on the
chunks that carry the answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import msgspec
import pytest
from aiohttp import web

from cocoon.core.usage import Usage
from cocoon.inference.fake import FakeEngine
from cocoon.inference.openai_upstream import OpenAIUpstreamEngine
from cocoon.inference.server import serve
from cocoon.inference.upstream_usage import ChunkUsage, counted_text, read_count
from cocoon.openai import schema
from cocoon.openai.schema import Endpoint, OpenAIRequest
from cocoon.wire.messages import Request, ResponseChunk, ResponseEnd, ResponseHead
from cocoon.worker.execution import Execution

MODEL = "fake-model"
HEAD = {"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": MODEL}


def typed(endpoint: Endpoint, body: dict[str, Any]) -> OpenAIRequest:
    return schema.decode_request(endpoint, msgspec.json.encode(body))


def chunk(text: str | None, usage: dict[str, int] | None = None) -> bytes:
    doc: dict[str, Any] = {**HEAD, "choices": [] if text is None else [{"index": 0, "delta": {"content": text}}]}
    if usage is not None:
        doc["usage"] = usage
    return json.dumps(doc).encode()


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def test_per_chunk_usage_is_read_from_the_first_chunk_and_taken_off_the_answer() -> None:
    relay = ChunkUsage(strip=True)
    out = [relay.feed(chunk("a", usage(9, 1))), relay.feed(chunk("b", usage(9, 2)))]
    assert relay.prompt == Usage(prompt_tokens=9)
    assert [json.loads(p) for p in out] == [json.loads(chunk("a")), json.loads(chunk("b"))]
    # no usage-only payload followed: the last usage taken off ends the stream
    assert json.loads(relay.tail() or b"") == {**HEAD, "choices": [], "usage": usage(9, 2)}
    assert relay.tail() is None


def test_a_usage_only_payload_passes_as_is_and_needs_no_tail() -> None:
    relay = ChunkUsage(strip=True)
    relay.feed(chunk("a", usage(9, 1)))
    last = chunk(None, usage(9, 1))
    assert relay.feed(last) == last and relay.tail() is None


def test_usage_the_caller_asked_for_is_left_where_the_server_put_it() -> None:
    relay = ChunkUsage(strip=False)
    first, last = chunk("a"), chunk("b", usage(4, 2))  # an older llama.cpp: usage on the last chunk with choices
    assert relay.feed(first) == first and relay.feed(last) == last
    assert relay.prompt is None and relay.tail() is None


def test_unreadable_usage_is_left_for_the_worker_to_refuse() -> None:
    relay = ChunkUsage(strip=True)
    bad = chunk("a", usage(-5, 1))
    assert relay.feed(bad) == bad and relay.prompt is None


def test_the_counted_text_is_the_prompts_own() -> None:
    chat = typed("chat", {"model": MODEL, "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hello"},
                                     {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]})
    assert counted_text(chat) == ("be brief\nhello", 0)
    assert counted_text(typed("completions", {"model": MODEL, "prompt": ["one", "two"]})) == ("one\ntwo", 0)
    assert counted_text(typed("completions", {"model": MODEL, "prompt": [[1, 2, 3], [4]]})) == ("", 4)
    assert counted_text(typed("completions", {"model": MODEL, "prompt": [4, 5]})) == ("", 2)


def test_only_a_count_is_read_as_one() -> None:
    assert read_count(b'{"count": 12}') == 12
    assert [read_count(raw) for raw in (b'{"tokens": [1, 2]}', b'{"count": -3}', b'{"count": "7"}', b"<html>")] == [
        None] * 4


@pytest.fixture
async def server() -> AsyncIterator[Callable[[web.Application], Any]]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}/v1"

    yield start
    for runner in runners:
        await runner.cleanup()


def streaming(payloads: Callable[[dict[str, Any]], Iterator[bytes]], seen: list[str]) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append(f"generate {json.dumps(body.get('stream_options'), sort_keys=True)}")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for payload in payloads(body):
            await resp.write(b"data: " + payload + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp
    return handler


async def relayed(engine: OpenAIUpstreamEngine, req: OpenAIRequest) -> tuple[list[bytes], list[Usage]]:
    prompts: list[Usage] = []
    out = [p async for p in engine.stream(req, prompts.append)]
    return out, prompts


STREAMED = {"model": MODEL, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "count these five words"}]}


async def test_a_server_with_per_chunk_usage_is_asked_for_it(server: Any) -> None:
    seen: list[str] = []

    def payloads(body: dict[str, Any]) -> Iterator[bytes]:
        every = body["stream_options"].get("continuous_usage_stats")
        yield chunk("a", usage(4, 1) if every else None)
        yield chunk("b", usage(4, 2) if every else None)
        yield chunk(None, usage(4, 2))

    app = web.Application()
    app.router.add_post("/v1/chat/completions", streaming(payloads, seen))
    engine = OpenAIUpstreamEngine(await server(app))
    try:
        for _ in range(2):
            out, prompts = await relayed(engine, typed("chat", STREAMED))
            assert prompts == [Usage(prompt_tokens=4)]
            assert out == [msgspec.json.encode(json.loads(chunk("a"))), msgspec.json.encode(json.loads(chunk("b"))),
                           chunk(None, usage(4, 2))]
        # one count asked for (answered 404: none here), then the server's chunks were known to carry usage
        assert seen == ['generate {"continuous_usage_stats": true, "include_usage": true}'] * 2
    finally:
        await engine.close()


async def test_a_server_without_stream_usage_counts_the_prompt_before_generating(server: Any) -> None:
    seen: list[str] = []

    async def count(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(f"count {body['input']}")
        return web.json_response({"count": len(body["input"].split())})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", streaming(lambda body: iter([chunk("a"), chunk("b")]), seen))
    app.router.add_post("/extras/tokenize/count", count)
    engine = OpenAIUpstreamEngine(await server(app))
    try:
        for _ in range(2):
            out, prompts = await relayed(engine, typed("chat", STREAMED))
            assert prompts == [Usage(prompt_tokens=4)] and out == [chunk("a"), chunk("b")]
        asked = 'generate {"continuous_usage_stats": true, "include_usage": true}'
        assert seen == ["count count these five words", asked] * 2
    finally:
        await engine.close()


async def test_a_strict_server_refusing_per_chunk_usage_is_asked_again_without(server: Any) -> None:
    """cocoon's own engine server refuses fields it does not know; it reports usage at the end only."""
    fake = FakeEngine(tokens_per_s=0, reply_tokens=3)
    runner, port = await serve(fake)
    engine = OpenAIUpstreamEngine(f"http://127.0.0.1:{port}/v1")
    try:
        for _ in range(2):
            out, prompts = await relayed(engine, typed("chat", STREAMED))
            assert prompts == []  # no per-chunk usage, no tokenize count: nothing is guessed
            assert json.loads(out[-1])["usage"]["completion_tokens"] == 3
        assert engine._every_chunk is False
    finally:
        await engine.close()
        await runner.cleanup()


async def test_the_worker_bills_a_counted_prompt_when_the_stream_reports_no_usage(server: Any) -> None:
    async def count(request: web.Request) -> web.Response:
        return web.json_response({"count": 11})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", streaming(lambda body: iter([chunk("a"), chunk("b")]), []))
    app.router.add_post("/extras/tokenize/count", count)
    engine = OpenAIUpstreamEngine(await server(app))
    sent: list[Any] = []

    async def send(msg: Any) -> None:
        sent.append(msg)

    req = Request(call_id=1, endpoint="chat", model=MODEL, body=json.dumps(STREAMED).encode(), stream=True,
                  include_usage=False, deadline=0, request_id="r")
    try:
        await Execution(engine, req, send).run()
    finally:
        await engine.close()
    head, *chunks, end = sent
    assert isinstance(head, ResponseHead) and head.usage == Usage(prompt_tokens=11)
    assert all(isinstance(c, ResponseChunk) for c in chunks) and len(chunks) == 2
    assert isinstance(end, ResponseEnd) and end.usage == Usage(prompt_tokens=11, completion_tokens=2)
