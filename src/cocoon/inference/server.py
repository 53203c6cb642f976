"""An OpenAI-compatible HTTP server for any engine: the benchmark's direct baseline, and a test double."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import msgspec
from aiohttp import web

from cocoon.core.errors import ApiError
from cocoon.inference.base import Engine
from cocoon.openai import http, schema, sse
from cocoon.openai.schema import Endpoint

_MAX_BODY = 32 * 1024 * 1024  # long prompts are legitimate


def build_app(engine: Engine) -> web.Application:
    """GET /v1/models, POST /v1/chat/completions and /v1/completions; the caller starts the engine."""

    async def models(_request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "cocoon"} for m in await engine.models()]
        return _json({"object": "list", "data": data})

    async def chat(request: web.Request) -> web.StreamResponse:
        return await _generate(engine, "chat", request)

    async def completions(request: web.Request) -> web.StreamResponse:
        return await _generate(engine, "completions", request)

    app = web.Application(client_max_size=_MAX_BODY, middlewares=[http.error_middleware(_MAX_BODY)])
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    return app


async def serve(engine: Engine, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve `engine` until `runner.cleanup()`; port 0 picks a free port, which is returned."""
    # handler_cancellation: a client that hangs up cancels its handler, which closes the engine's stream
    runner = web.AppRunner(build_app(engine), handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, runner.addresses[0][1]


async def _generate(engine: Engine, endpoint: Endpoint, request: web.Request) -> web.StreamResponse:
    req = schema.decode_request(endpoint, await http.read_body(request, _MAX_BODY))
    if not req.stream:
        return web.Response(body=await engine.complete(req), content_type="application/json")
    async with aclosing(engine.stream(req)) as payloads:
        # Wait for the first payload before answering 200, so a refused request gets a real HTTP error.
        first = await anext(payloads, None)
        resp = await http.open_stream(request)
        try:
            if first is not None:
                await resp.write(sse.event(first))
            async for payload in payloads:
                await resp.write(sse.event(payload))
        except ApiError as exc:
            await resp.write(sse.event(exc.to_json()))
            return resp
        except ConnectionResetError:  # the client left; leaving the block closes the engine's stream
            return resp
        except Exception as exc:
            await resp.write(sse.event(http.internal_error(exc, "engine failed mid-stream").to_json()))
            return resp
        await resp.write(sse.DONE)
        return resp


def _json(doc: Any) -> web.Response:
    return web.Response(body=msgspec.json.encode(doc), content_type="application/json")
