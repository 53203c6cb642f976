"""What the proxy forwards: a request a worker can read, within the proxy's limits.

A peer that speaks the wire protocol can skip its client's checks. What no worker could serve is refused here,
before it takes a worker's slot, holds money or counts against a limit: an unknown endpoint, a body over
`max_body_bytes` (413), a body that is not one JSON object (400), an output cap (`max_tokens`, which the proxy
reserves money for and the worker holds the engine to) above `max_tokens_limit` (400). The body is scanned once,
without building it (msgspec skips the fields of an object it has no use for); the worker decodes it with the
OpenAI schema and refuses what that finds at once.

A sealed body (cocoon/seal) cannot be scanned: its structure is checked without a key (`peek`), and its plaintext
length, which the ciphertext's gives exactly, is held to `max_body_bytes` and bounds its prompt for billing like
a plain body's length. The worker it was sealed to opens it and refuses what the schema refuses.
"""

from __future__ import annotations

import msgspec

from cocoon.core.errors import ApiError, ErrorCode
from cocoon.openai.schema import ENDPOINTS, unknown_endpoint
from cocoon.seal import peek
from cocoon.wire.messages import MEDIA_ENDPOINT, MEDIA_WORKLOAD, Request


class _AnyObject(msgspec.Struct):
    """Any JSON object: its fields are skipped (checked to be JSON), never built."""


_OBJECT = msgspec.json.Decoder(_AnyObject)


def check_request(req: Request, *, max_body_bytes: int, max_tokens_limit: int, max_media_ms: int = 0) -> int:
    """Raise the ApiError a client gets for a request no worker should be asked to serve; else the body's length
    in bytes (a sealed body's plaintext length), what bounds its prompt."""
    if req.endpoint == MEDIA_ENDPOINT:
        _check_media(req, max_media_ms)
    elif req.endpoint not in ENDPOINTS:
        raise unknown_endpoint(req.endpoint)
    elif req.parts:
        raise ApiError(400, f"a `{req.endpoint}` request has no body parts", code=ErrorCode.INVALID_REQUEST)
    body_bytes = peek(req.body).body_len if req.sealed else len(req.body)
    if body_bytes > max_body_bytes:
        sealed = "sealed " if req.sealed else ""
        raise ApiError(413, f"the {sealed}request body is {body_bytes} bytes, above this proxy's limit of "
                            f"{max_body_bytes}", code=ErrorCode.REQUEST_TOO_LARGE)
    if req.max_tokens is not None:
        if req.max_tokens < 1:
            raise ApiError(400, f"`max_tokens` must be at least 1, not {req.max_tokens}",
                           code=ErrorCode.INVALID_VALUE, param="max_tokens")
        if req.max_tokens > max_tokens_limit:
            raise ApiError(400, f"`max_tokens` is {req.max_tokens}, above this proxy's limit of {max_tokens_limit} "
                                f"tokens", code=ErrorCode.MAX_TOKENS_EXCEEDED, param="max_tokens")
    if req.sealed:
        return body_bytes
    try:
        _OBJECT.decode(req.body)
    except msgspec.ValidationError:
        raise ApiError(400, "the request body must be a JSON object", code=ErrorCode.INVALID_TYPE) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", code=ErrorCode.INVALID_JSON) from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply", code=ErrorCode.INVALID_JSON) from None
    return body_bytes


def _check_media(req: Request, max_media_ms: int) -> None:
    """A media job: its input follows in parts, and the input it may process (what is reserved) is bounded."""
    if not req.parts or req.model != MEDIA_WORKLOAD or req.max_tokens is not None:
        raise ApiError(400, f"a media job is routed to `{MEDIA_WORKLOAD}`, with its input in parts and no max_tokens",
                       code=ErrorCode.INVALID_REQUEST)
    if not 0 < req.max_media_ms <= max_media_ms:
        raise ApiError(413, f"a media job may process at most {max_media_ms / 1000:g} s of input here, and must "
                            f"declare how much (it declared {req.max_media_ms} ms)", code=ErrorCode.MEDIA_TOO_LARGE,
                       param="duration")
