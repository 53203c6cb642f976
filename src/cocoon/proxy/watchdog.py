"""Timeouts for one call to a worker, with one timer per call instead of one per relayed frame.

When a limit passes, the watchdog cancels the call on the worker and puts a timeout error in the call's
answer queue, where the relay loop meets it like any other answer: the loop itself never arms a timer.
"""

from __future__ import annotations

import asyncio
import math

from cocoon.core.errors import ApiError, ErrorCode
from cocoon.wire.connection import Call
from cocoon.wire.messages import ResponseError


class Watchdog:
    __slots__ = ("_call", "_deadline", "_first_token_s", "_handle", "_idle_s", "_last", "_loop", "_started",
                 "_streaming", "worker_name")

    def __init__(self, call: Call, worker_name: str, *, first_token_s: float | None, idle_s: float,
                 deadline: float) -> None:
        """`first_token_s` None: no limit before the answer starts; `deadline` is in event-loop time."""
        self._loop = asyncio.get_running_loop()
        self._call = call
        self.worker_name = worker_name
        self._first_token_s = first_token_s
        self._idle_s = idle_s
        self._deadline = deadline
        self._started = self._last = self._loop.time()
        self._streaming = False
        self._handle = self._loop.call_at(self._due()[0], self._check)

    def answer_started(self) -> None:
        """From now on the limit is the silence between frames."""
        self._streaming = True
        self._last = self._loop.time()

    def touch(self) -> None:
        self._last = self._loop.time()

    def stop(self) -> None:
        self._handle.cancel()

    def _due(self) -> tuple[float, ErrorCode]:
        if self._streaming:
            due, code = self._last + self._idle_s, ErrorCode.IDLE_TIMEOUT
        elif self._first_token_s is not None:
            due, code = self._started + self._first_token_s, ErrorCode.FIRST_TOKEN_TIMEOUT
        else:
            due, code = math.inf, ErrorCode.REQUEST_TIMEOUT
        return (self._deadline, ErrorCode.REQUEST_TIMEOUT) if self._deadline <= due else (due, code)

    def _check(self) -> None:
        due, code = self._due()
        if self._loop.time() < due:  # frames arrived since this check was planned
            self._handle = self._loop.call_at(due, self._check)
            return
        self._call.cancel(f"proxy timeout: {code}")
        timeout = ApiError(504, self._message(code), type="timeout_error", code=code)
        self._call.queue.put_nowait(ResponseError.from_api(timeout, self._call.call_id))

    def _message(self, code: ErrorCode) -> str:
        if code == ErrorCode.FIRST_TOKEN_TIMEOUT:
            return f"worker {self.worker_name} sent no first token within {self._first_token_s:.1f}s"
        if code == ErrorCode.IDLE_TIMEOUT:
            return f"worker {self.worker_name} sent nothing for {self._idle_s:.1f}s in the middle of the answer"
        return f"the request reached its deadline after {self._loop.time() - self._started:.1f}s with worker " \
               f"{self.worker_name}"
