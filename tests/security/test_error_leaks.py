"""Issue 15 item 17, attacks: what error answers and metrics give away, through a real proxy, worker and client.

- A client provoking engine failures read the worker's internal engine URL and exception reprs in the error
  messages (`cannot reach the engine at http://10.0.0.7:8000/v1/...: ClientConnectorError(...)`), and an engine's
  own 5xx words, which may describe its internals or quote someone's prompt.
- An engine exception other than an API error was answered by nobody (and its message was the only trace).
- A worker chose any error code it liked, and the proxy used it as a Prometheus label value: a worker making up
  a fresh code per failure grew the proxy's metrics without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import generate_latest

from cocoon.config import SelectionConfig
from cocoon.core.errors import ApiError, ErrorCode
from cocoon.inference.fake import FakeEngine
from cocoon.inference.local import GenRequest, Tally
from cocoon.inference.openai_upstream import OpenAIUpstreamEngine
from cocoon.wire.connection import Connection
from cocoon.wire.messages import Message, Request, ResponseError
from tests.integration.inproc import MODEL, chat, network

SECRET = "/srv/engine-internals/secret-path"


def all_logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)


@contextlib.asynccontextmanager
async def failing_upstream() -> AsyncIterator[tuple[str, web.AppRunner]]:
    """An OpenAI-compatible engine on 127.0.0.1 that lists its model and fails every generation with a 500
    whose words describe its internals."""

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def fail(_request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": f"CUDA out of memory in {SECRET}", "type": "server_error",
                                            "code": "engine_crash"}}, status=500)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", fail)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1", runner
    finally:
        await runner.cleanup()


async def test_the_engines_address_and_words_stay_in_the_workers_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with failing_upstream() as (url, upstream), network() as net:
        proxy = await net.proxy(tmp_path, max_attempts=1)
        engine = OpenAIUpstreamEngine(url)
        await net.worker(proxy, engine)  # type: ignore[arg-type]
        await net.client([proxy])
        address = url.removeprefix("http://").removesuffix("/v1")

        failed = await net.post(chat(stream=False))
        error = failed.json()["error"]
        assert failed.status == 500 and error["code"] == "engine_error", error
        assert SECRET not in failed.raw.decode() and address not in failed.raw.decode()

        await upstream.cleanup()  # the engine goes away: connections to it are refused
        for stream in (False, True):
            gone = await net.post(chat(stream=stream))
            text = gone.raw.decode()
            assert "engine_unavailable" in text, text
            assert address not in text and "Error(" not in text and "Connect call failed" not in text, text
    logged = all_logged(caplog)
    assert address in logged  # the operator still finds where it failed
    assert SECRET not in logged  # the engine's own words are in the engine's log, not copied here


class _Crashes(FakeEngine):
    async def generate(self, req: GenRequest, usage: Tally) -> AsyncIterator[str]:
        raise RuntimeError(f"internal state at {SECRET}")
        yield ""  # an async generator


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_an_engine_exception_gets_a_generic_500_at_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, stream: bool) -> None:
    async with network() as net:
        proxy = await net.proxy(tmp_path, max_attempts=1)
        await net.worker(proxy, _Crashes())
        await net.client([proxy])
        # before the fix nobody answered: the request waited for its deadline (or the first-token timeout)
        answer = await asyncio.wait_for(net.post(chat(stream=stream)), 10)
    error = answer.json()["error"]
    assert answer.status == 500 and error["code"] == "internal_error", error
    assert SECRET not in answer.raw.decode() and "RuntimeError" not in answer.raw.decode()
    logged = all_logged(caplog)
    assert "RuntimeError" in logged and SECRET not in logged  # the type and place, never the message


class _BreaksMidStream(FakeEngine):
    async def generate(self, req: GenRequest, usage: Tally) -> AsyncIterator[str]:
        async with contextlib.aclosing(super().generate(req, usage)) as pieces:
            async for i, piece in _enumerate(pieces):
                if i == 2:
                    raise ApiError(503, "the engine broke", type="api_error", code=ErrorCode.ENGINE_ERROR)
                yield piece


async def _enumerate(items: AsyncIterator[str]) -> AsyncIterator[tuple[int, str]]:
    i = 0
    async for item in items:
        yield i, item
        i += 1


class _MintingLink:
    """The link as a modified worker uses it: every error it sends carries a code made up for the occasion."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def send(self, msg: Message) -> None:
        if isinstance(msg, ResponseError):
            msg.code = f"made_up_{uuid.uuid4().hex[:8]}"
        await self._conn.send(msg)


async def test_codes_a_worker_makes_up_do_not_mint_metric_labels(tmp_path: Path) -> None:
    async with network() as net:
        proxy = await net.proxy(tmp_path, selection=SelectionConfig(bench_after_failures=100))
        node = await net.worker(proxy, _BreaksMidStream(reply_tokens=8))
        execute = node._execute

        def minting(conn: Connection, req: Request) -> Any:
            return execute(_MintingLink(conn), req)  # type: ignore[arg-type]

        node._execute = minting  # type: ignore[method-assign]
        client = await net.client([proxy])
        for _ in range(5):
            broken = await net.post(chat())
            assert broken.status == 200 and not broken.done and broken.content_chunks() == 2
            assert broken.events()[-1]["error"]["code"] == "upstream_error"  # the client sees our codes only
    metrics = generate_latest(proxy.metrics.registry).decode()
    assert "made_up" not in metrics
    ours = {code.value for code in ErrorCode} | {"other"}
    assert set(proxy.forwarder.outcomes) <= ours and sum(proxy.forwarder.outcomes.values()) == 5
    assert set(client.api.stats.outcomes) <= ours
