"""An OpenAI-compatible HTTP server for any engine: the benchmark's direct baseline, and a test double."""

from __future__ import annotations

import logging
from contextlib import aclosing
from typing import Any

import msgspec
from aiohttp import web

from cocoon.core.errors import ApiError, ErrorCode, bad_request
from cocoon.inference.base import Endpoint, Engine

log = logging.getLogger(__name__)

_MAX_BODY = 32 * 1024 * 1024  # long prompts are legitimate
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def build_app(engine: Engine) -> web.Application:
    """GET /v1/models, POST /v1/chat/completions and /v1/completions; the caller starts the engine."""

    async def models(_request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "cocoon"} for m in await engine.models()]
        return _json({"object": "list", "data": data})

    async def chat(request: web.Request) -> web.StreamResponse:
        return await _generate(engine, "chat", request)

    async def completions(request: web.Request) -> web.StreamResponse:
        return await _generate(engine, "completions", request)

    app = web.Application(client_max_size=_MAX_BODY, middlewares=[_errors])
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
    try:
        body = msgspec.json.decode(await request.read())
    except msgspec.DecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", code=ErrorCode.INVALID_JSON) from exc
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code=ErrorCode.INVALID_JSON)
    if not body.get("stream"):
        return web.Response(body=await engine.complete(endpoint, body), content_type="application/json")
    async with aclosing(engine.stream(endpoint, body)) as payloads:
        # Wait for the first payload before answering 200, so a refused request gets a real HTTP error.
        first = await anext(payloads, None)
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)
        try:
            if first is not None:
                await resp.write(b"data: " + first + b"\n\n")
            async for payload in payloads:
                await resp.write(b"data: " + payload + b"\n\n")
        except ApiError as exc:
            await resp.write(b"data: " + exc.to_json() + b"\n\n")
            return resp
        except ConnectionResetError:  # the client left; leaving the block closes the engine's stream
            return resp
        except Exception:
            log.exception("engine failed mid-stream")
            await resp.write(b"data: " + _internal_error().to_json() + b"\n\n")
            return resp
        await resp.write(b"data: [DONE]\n\n")
        return resp


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure answers in OpenAI's error shape."""
    try:
        return await handler(request)
    except ApiError as exc:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return web.Response(status=exc.status, body=exc.to_json(), content_type="application/json",
                            headers=headers)
    except web.HTTPException as exc:
        error = ApiError(exc.status, f"{exc.reason}: {request.method} {request.path}",
                         code=ErrorCode.NOT_FOUND if exc.status == 404 else None)
        return web.Response(status=exc.status, body=error.to_json(), content_type="application/json")
    except Exception:
        log.exception("engine failed on %s", request.path)
        return web.Response(status=500, body=_internal_error().to_json(), content_type="application/json")


def _internal_error() -> ApiError:
    return ApiError(500, "the engine failed; see the server log", type="api_error", code=ErrorCode.INTERNAL_ERROR)


def _json(doc: Any) -> web.Response:
    return web.Response(body=msgspec.json.encode(doc), content_type="application/json")
