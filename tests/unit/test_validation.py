"""What the proxy refuses to forward (proxy/validation.py), each with its status, code and param."""

from __future__ import annotations

import pytest

from cocoon.core.errors import ApiError
from cocoon.proxy.validation import check_request
from cocoon.wire.messages import Request

LIMITS = {"max_body_bytes": 20_000, "max_tokens_limit": 64}


def request(body: bytes = b'{"model": "m", "messages": []}', **fields: object) -> Request:
    return Request(endpoint=str(fields.pop("endpoint", "chat")), model="m", body=body, stream=False,
                   include_usage=False, deadline=0, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("req", "status", "code", "param"), [
    (request(b"not JSON"), 400, "invalid_json", None),
    (request(b'{"model": "m"} trailing'), 400, "invalid_json", None),
    (request(b'{"model": "m", "messages": [1, 2,]}'), 400, "invalid_json", None),
    (request(b'[{"model": "m"}]'), 400, "invalid_type", None),
    (request(b'"a string"'), 400, "invalid_type", None),
    (request(b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}"), 400, "invalid_json", None),
    (request(b'{"pad": "' + b"x" * 20_000 + b'"}'), 413, "request_too_large", None),
    (request(max_tokens=65), 400, "max_tokens_exceeded", "max_tokens"),
    (request(max_tokens=-1), 400, "invalid_value", "max_tokens"),
    (request(endpoint="embeddings"), 400, "invalid_value", "endpoint"),
], ids=["not_json", "trailing", "malformed", "array", "string", "deep", "large", "cap", "negative_cap", "endpoint"])
def test_what_no_worker_should_be_asked_is_refused(req: Request, status: int, code: str, param: str | None) -> None:
    with pytest.raises(ApiError) as refused:
        check_request(req, **LIMITS)
    assert (refused.value.status, refused.value.code, refused.value.param) == (status, code, param)


def test_what_a_worker_can_read_passes() -> None:
    check_request(request(max_tokens=64), **LIMITS)
    check_request(request(b'{"model": "m", "messages": [{"role": ["user"]}]}', endpoint="completions"), **LIMITS)
    check_request(request(b'{"pad": "' + b"x" * 19_980 + b'"}'), **LIMITS)  # at the limit


def media(**fields: object) -> Request:
    base: dict[str, object] = {"endpoint": "media", "model": "media", "body": b'{"format": "ogg", "codec": "opus"}',
                               "stream": True, "include_usage": False, "deadline": 0, "parts": True,
                               "max_media_ms": 1000}
    return Request(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(("req", "status", "code", "param"), [
    (media(parts=False), 400, "invalid_request", None),
    (media(model="fake-model"), 400, "invalid_request", None),
    (media(max_tokens=5), 400, "invalid_request", None),
    (media(max_media_ms=0), 413, "media_too_large", "duration"),
    (media(max_media_ms=60_001), 413, "media_too_large", "duration"),
    (media(body=b"[1]"), 400, "invalid_type", None),
    (request(parts=True), 400, "invalid_request", None),
], ids=["no_parts", "not_routed_to_media", "max_tokens", "no_bound", "above_bound", "not_object", "chat_parts"])
def test_media_jobs_refused(req: Request, status: int, code: str, param: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        check_request(req, **LIMITS, max_media_ms=60_000)
    assert (caught.value.status, caught.value.code, caught.value.param) == (status, code, param)


def test_a_media_job_within_its_bound_passes() -> None:
    check_request(media(max_media_ms=60_000), **LIMITS, max_media_ms=60_000)
