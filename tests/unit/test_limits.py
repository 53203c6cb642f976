"""Per-client limits: concurrency and tokens per minute, each with its own 429."""

from __future__ import annotations

import pytest

from cocoon.core.errors import ApiError
from cocoon.proxy.limits import ClientLimiter


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_concurrency_limit_is_per_client() -> None:
    limits = ClientLimiter(max_concurrent=2, tokens_per_minute=0)
    limits.admit("flood")
    limits.admit("flood")
    with pytest.raises(ApiError) as err:
        limits.admit("flood")
    assert err.value.status == 429 and err.value.code == "concurrency_limit_exceeded"
    assert err.value.retry_after == 1
    limits.admit("calm")  # another client is not affected
    limits.release("flood")
    limits.admit("flood")


def test_tokens_per_minute_go_into_debt_and_refill() -> None:
    clock = Clock()
    limits = ClientLimiter(max_concurrent=0, tokens_per_minute=600, clock=clock)  # 10 tokens/s
    limits.admit("c")
    limits.charge("c", 700)  # one big answer overdraws the minute by 100
    limits.release("c")
    with pytest.raises(ApiError) as err:
        limits.admit("c")
    assert err.value.code == "tokens_per_minute_exceeded" and err.value.retry_after == 11
    clock.now = 10.0
    with pytest.raises(ApiError):
        limits.admit("c")  # back to exactly zero: still nothing left
    clock.now = 10.2
    limits.admit("c")


def test_idle_clients_are_forgotten() -> None:
    clock = Clock()
    limits = ClientLimiter(max_concurrent=4, tokens_per_minute=60, clock=clock)
    for name in ("a", "b"):
        limits.admit(name)
        limits.charge(name, 30)
        limits.release(name)
    clock.now = 31.0  # both allowances full again
    limits.admit("c")
    assert "a" not in limits._clients and "b" in limits._clients
