"""The retry policy of one request, without I/O: what a worker's error says, which workers were tried, and when
to give up.

Until the first token reaches the client, a worker's failure is invisible to it: the request moves to another
worker, within `max_attempts` and its deadline. An error is held against the worker that sent it only when it
is the worker's fault (a 5xx, or one of the proxy's own timeouts, which are 504s); a 4xx says something about
the request and is the client's answer, never counted against anyone; a 429 says the worker is full, so another
may take the request, and is not held against it either.
"""

from __future__ import annotations

import enum
from typing import Generic, TypeVar

from cocoon.core.errors import ApiError, ErrorCode
from cocoon.wire.messages import ResponseError

W = TypeVar("W")


class Verdict(enum.Enum):
    REFUSED = "refused"  # the request's own fault (4xx) or its deadline: the client gets the error, nobody is blamed
    BUSY = "busy"  # the worker is full (429): another worker may take the request; nobody is blamed
    FAULT = "fault"  # the worker failed (5xx, or a timeout of the proxy's): another may do better; the worker is blamed


def judge(error: ResponseError) -> Verdict:
    """What a worker's error (or the watchdog's, in its name) says. A worker's own deadline (`request_timeout`)
    is the request's: every other worker would reach it too."""
    if error.status >= 500:
        return Verdict.REFUSED if error.code == ErrorCode.REQUEST_TIMEOUT else Verdict.FAULT
    return Verdict.BUSY if error.status == 429 else Verdict.REFUSED


def deadline_after(now: float, seconds_left: float, limit_s: float) -> float:
    """The request's deadline in the clock of `now`: what its client left it (`seconds_left`, never below 0),
    at most the proxy's own limit."""
    return now + min(max(seconds_left, 0.0), limit_s)


class Attempts(Generic[W]):
    """The workers one request was tried on, and why the last one failed."""

    __slots__ = ("deadline", "failure", "max_attempts", "started", "tried")

    def __init__(self, started: float, deadline: float, max_attempts: int) -> None:
        self.started = started
        self.deadline = deadline
        self.max_attempts = max_attempts
        self.tried: list[W] = []
        self.failure: ApiError | None = None

    def more(self, now: float) -> bool:
        """Whether another worker may be tried now."""
        return len(self.tried) < self.max_attempts and now < self.deadline

    def wait_s(self, now: float, queue_timeout_s: float) -> float:
        """How long the next attempt may wait for a free worker."""
        return min(queue_timeout_s, self.deadline - now)

    def failed(self, worker: W, error: ApiError) -> None:
        self.tried.append(worker)
        self.failure = error

    def give_up(self, now: float) -> ApiError:
        """The client's answer once no other worker may be tried: its deadline passed (504), or the last worker's
        error after `max_attempts` (with a Retry-After: the workers may recover)."""
        failure = self.failure
        if failure is None or now >= self.deadline:
            return ApiError(504, f"the request reached its deadline after {now - self.started:.1f}s "
                                 f"({len(self.tried)} worker(s) tried)", type="timeout_error",
                            code=ErrorCode.REQUEST_TIMEOUT)
        return failure.with_message(f"{failure.message} (gave up after {len(self.tried)} workers)",
                                    retry_after=failure.retry_after or 1)
