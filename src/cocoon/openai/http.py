"""aiohttp plumbing shared by every OpenAI-style HTTP API here (the client's, the engines' test server).

Every failure answers in OpenAI's error shape, `{"error": {message, type, code, param}}`; a failure the caller
cannot act on answers a generic message and leaves its details in the local log only.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable

from aiohttp import web

from cocoon.core.errors import ApiError, ErrorCode
from cocoon.openai import sse

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def error_response(exc: ApiError) -> web.Response:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return web.Response(status=exc.status, body=exc.to_json(), content_type="application/json", headers=headers)


def internal_error(exc: BaseException, what: str, fields: dict[str, object] | None = None) -> ApiError:
    """The generic 500 answered for an unexpected failure, logged here as its type and where it was raised:
    its message stays out of both the answer and the log, since it may quote the request."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    log.error(what, extra={"fields": {**(fields or {}), "exception": type(exc).__name__, "at": where}})
    return ApiError(500, "internal error; see the server's log", type="api_error", code=ErrorCode.INTERNAL_ERROR)


def error_middleware(max_body_bytes: int) -> Middleware:
    """Turns whatever a handler raises into an OpenAI-style error answer."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc)
        except web.HTTPRequestEntityTooLarge:
            return error_response(ApiError(413, f"request body exceeds the {max_body_bytes}-byte limit",
                                           code=ErrorCode.REQUEST_TOO_LARGE))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(ApiError(exc.status, f"{exc.reason}: {request.method} {request.path}",
                                           code=ErrorCode.NOT_FOUND if exc.status == 404
                                           else ErrorCode.INVALID_REQUEST))
        except Exception as exc:
            return error_response(internal_error(exc, "request failed", {"path": request.path}))

    return errors


async def read_body(request: web.Request, max_body_bytes: int) -> bytes:
    """The request body, refused with 413 before reading when its declared length is over the limit."""
    if request.content_length is not None and request.content_length > max_body_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=max_body_bytes, actual_size=request.content_length)
    return await request.read()


async def open_stream(request: web.Request, headers: dict[str, str] | None = None) -> web.StreamResponse:
    """A prepared `text/event-stream` answer; write `sse.event(...)` to it, then `sse.DONE`."""
    resp = web.StreamResponse(headers={**sse.HEADERS, **(headers or {})})
    await resp.prepare(request)
    return resp
