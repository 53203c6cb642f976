"""The retry policy of one request (proxy/attempts.py), without I/O: what each worker error says, when to give up."""

from __future__ import annotations

import pytest

from cocoon.core.errors import ApiError, ErrorCode
from cocoon.proxy.attempts import Attempts, Verdict, deadline_after, judge
from cocoon.wire.messages import ResponseError


def worker_error(status: int, code: str | None) -> ResponseError:
    return ResponseError(call_id=1, status=status, message="m", code=code)


@pytest.mark.parametrize(("status", "code", "verdict"), [
    (500, ErrorCode.INTERNAL_ERROR, Verdict.FAULT),
    (502, ErrorCode.ENGINE_ERROR, Verdict.FAULT),
    (503, None, Verdict.FAULT),
    (504, ErrorCode.FIRST_TOKEN_TIMEOUT, Verdict.FAULT),  # the watchdog's, in the worker's name
    (504, ErrorCode.IDLE_TIMEOUT, Verdict.FAULT),
    (504, ErrorCode.REQUEST_TIMEOUT, Verdict.REFUSED),  # the request's own deadline: any worker would reach it
    (429, ErrorCode.CONCURRENCY_LIMIT_EXCEEDED, Verdict.BUSY),
    (400, ErrorCode.INVALID_JSON, Verdict.REFUSED),
    (404, ErrorCode.MODEL_NOT_FOUND, Verdict.REFUSED),
    (408, ErrorCode.FIRST_TOKEN_TIMEOUT, Verdict.REFUSED),  # a 4xx is never the worker's fault, whatever its code
    (400, ErrorCode.IDLE_TIMEOUT, Verdict.REFUSED),
])
def test_what_a_workers_error_says(status: int, code: str | None, verdict: Verdict) -> None:
    assert judge(worker_error(status, code)) is verdict


def test_attempts_stop_at_the_limit_and_give_the_last_workers_error() -> None:
    attempts: Attempts[str] = Attempts(started=100.0, deadline=200.0, max_attempts=2)
    assert attempts.more(100.0) and attempts.wait_s(195.0, 5.0) == 5.0 and attempts.wait_s(198.0, 5.0) == 2.0
    attempts.failed("w1", ApiError(502, "w1 broke", code=ErrorCode.ENGINE_ERROR))
    assert attempts.more(101.0) and attempts.tried == ["w1"]
    attempts.failed("w2", ApiError(503, "w2 broke", code=ErrorCode.ENGINE_UNAVAILABLE, param="model"))
    assert not attempts.more(102.0)
    last = attempts.give_up(102.0)
    assert (last.status, last.code, last.param, last.retry_after) == (503, "engine_unavailable", "model", 1)
    assert last.message == "w2 broke (gave up after 2 workers)"


def test_the_deadline_ends_the_attempts_with_504() -> None:
    attempts: Attempts[str] = Attempts(started=0.0, deadline=deadline_after(0.0, 30.0, 10.0), max_attempts=3)
    assert attempts.deadline == 10.0  # the proxy's own limit is shorter than what the client left
    attempts.failed("w1", ApiError(502, "w1 broke", code=ErrorCode.ENGINE_ERROR))
    assert not attempts.more(10.0)
    late = attempts.give_up(10.5)
    assert (late.status, late.code) == (504, "request_timeout") and "after 10.5s (1 worker(s) tried)" in late.message
    never: Attempts[str] = Attempts(started=5.0, deadline=deadline_after(5.0, -3.0, 10.0), max_attempts=3)
    assert never.deadline == 5.0 and not never.more(5.0)  # a deadline already passed: no worker is asked
    assert never.give_up(5.0).code == "request_timeout"
