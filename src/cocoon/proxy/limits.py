"""Per-client limits: requests in flight, and tokens per minute. Over a limit: 429 with Retry-After.

A client here is whoever pays (billing.Account.limits_key): the wallet behind a verified channel, however many
RA-TLS keys it presents itself under; only with payments off is it the link's key, which costs nothing to mint.

Tokens are known only once a request is charged, so the per-minute allowance is a bucket that refills
continuously and may go into debt: a client is admitted while its bucket is above zero, and a request that
overdraws it delays the next one by the time the bucket needs to recover.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cocoon.core.errors import ApiError, ErrorCode


@dataclass
class _Client:
    active: int
    tokens: float  # what is left of this minute's allowance; negative is debt
    updated: float


class ClientLimiter:
    def __init__(self, max_concurrent: int, tokens_per_minute: int, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_concurrent = max_concurrent
        self.tokens_per_minute = tokens_per_minute
        self.clock = clock
        self._clients: OrderedDict[str, _Client] = OrderedDict()  # least recently admitted first

    def admit(self, client: str) -> None:
        """Count one more request in flight for `client`, or raise 429 if a limit says no."""
        now = self.clock()
        self._forget_one_idle(now)
        state = self._clients.get(client)
        if state is None:
            state = self._clients[client] = _Client(0, float(self.tokens_per_minute), now)
        else:
            self._clients.move_to_end(client)
        if self.max_concurrent and state.active >= self.max_concurrent:
            raise ApiError(429, f"this client already has {state.active} requests in flight, the limit is "
                                f"{self.max_concurrent}; wait for one to finish", type="rate_limit_error",
                           code=ErrorCode.CONCURRENCY_LIMIT_EXCEEDED, retry_after=1)
        if self.tokens_per_minute:
            self._refill(state, now)
            if state.tokens <= 0:
                wait = math.ceil((1 - state.tokens) * 60 / self.tokens_per_minute)
                raise ApiError(429, f"this client used its {self.tokens_per_minute} tokens per minute; the "
                                    f"allowance refills in {wait}s", type="rate_limit_error",
                               code=ErrorCode.TOKENS_PER_MINUTE_EXCEEDED, retry_after=wait)
        state.active += 1

    def charge(self, client: str, tokens: int) -> None:
        if self.tokens_per_minute and (state := self._clients.get(client)) is not None:
            self._refill(state, self.clock())
            state.tokens -= tokens

    def release(self, client: str) -> None:
        state = self._clients.get(client)
        if state is None:
            return
        state.active -= 1
        if state.active == 0 and not self.tokens_per_minute:
            del self._clients[client]

    def _refill(self, state: _Client, now: float) -> None:
        state.tokens = min(state.tokens + (now - state.updated) * self.tokens_per_minute / 60,
                           float(self.tokens_per_minute))
        state.updated = now

    def _forget_one_idle(self, now: float) -> None:
        """Drop the least recently admitted client if it is idle with a full allowance: memory stays bounded."""
        if not self._clients:
            return
        key, state = next(iter(self._clients.items()))
        if state.active == 0:
            self._refill(state, now)
            if state.tokens >= self.tokens_per_minute:
                del self._clients[key]
