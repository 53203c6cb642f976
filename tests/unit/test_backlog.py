"""Backpressure: a bounded line of requests waiting for a worker slot, served oldest first."""

from __future__ import annotations

import asyncio

import pytest

from cocoon.config import SelectionConfig
from cocoon.core.errors import ApiError
from cocoon.proxy.backlog import Backlog, Want
from cocoon.proxy.reputation import ReputationBook
from cocoon.proxy.selection import Selector
from tests.unit.test_selection import FakeWorker, worker


def backlog(depth: int, *workers: FakeWorker) -> Backlog[FakeWorker]:
    sel: Selector[FakeWorker] = Selector(SelectionConfig(), ReputationBook(keep_s=60))
    for w in workers:
        sel.add(w)
    return Backlog(sel, depth)


async def test_a_freed_slot_goes_to_the_oldest_waiter() -> None:
    w = worker("w", max_active=1)
    line = backlog(4, w)
    assert await line.acquire(Want("m"), (), 1.0) is w
    first = asyncio.create_task(line.acquire(Want("m"), (), 5.0))
    await asyncio.sleep(0)
    second = asyncio.create_task(line.acquire(Want("m"), (), 5.0))
    await asyncio.sleep(0)
    assert len(line) == 2
    line.release(w)
    assert await first is w and not second.done()
    line.release(w)
    assert await second is w and len(line) == 0


async def test_full_line_and_long_wait_answer_503_with_retry_after() -> None:
    w = worker("w", max_active=1)
    line = backlog(1, w)
    await line.acquire(Want("m"), (), 1.0)
    waiting = asyncio.create_task(line.acquire(Want("m"), (), 0.2))
    await asyncio.sleep(0)
    with pytest.raises(ApiError) as full:
        await line.acquire(Want("m"), (), 1.0)
    assert full.value.status == 503 and full.value.code == "queue_full" and full.value.retry_after
    with pytest.raises(ApiError) as busy:
        await waiting
    assert busy.value.code == "no_worker_available" and "stayed busy for 0.2s" in busy.value.message
    assert len(line) == 0


async def test_nothing_to_wait_for_fails_at_once() -> None:
    line = backlog(4, worker("w", coefficient=2000, region="eu"))
    for want in (Want("m", max_coefficient=1000), Want("m", region="us"), Want("other")):
        with pytest.raises(ApiError) as err:
            await line.acquire(want, (), 5.0)
        assert err.value.code == "no_worker_available" and "no connected worker serves" in err.value.message


async def test_a_cancelled_waiter_leaves_the_line_and_wrong_wants_do_not_block_others() -> None:
    eu, us = worker("eu", region="eu", max_active=1), worker("us", region="us", max_active=1)
    line = backlog(4, eu, us)
    await line.acquire(Want("m", region="eu"), (), 1.0)
    await line.acquire(Want("m", region="us"), (), 1.0)
    gone = asyncio.create_task(line.acquire(Want("m", region="eu"), (), 5.0))
    wants_eu = asyncio.create_task(line.acquire(Want("m", region="eu"), (), 5.0))
    wants_us = asyncio.create_task(line.acquire(Want("m", region="us"), (), 5.0))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    line.release(us)  # the eu waiters ahead cannot use it
    assert await wants_us is us
    line.release(eu)
    assert await wants_eu is eu and len(line) == 0


async def test_tools_with_no_capable_worker_is_a_400_naming_the_field() -> None:
    line = backlog(4, worker("plain"))
    with pytest.raises(ApiError) as err:
        await line.acquire(Want("m", features=("tools",)), (), 1.0)
    assert err.value.status == 400 and err.value.code == "unsupported_parameter" and "`tools`" in err.value.message
    capable = worker("capable", tools=True)
    line.selector.add(capable)
    assert await line.acquire(Want("m", features=("response_format",)), (), 1.0) is capable


async def test_a_waiter_held_to_named_workers_gets_only_one_of_them_and_blocks_nobody() -> None:
    """A sealed request waits for one of its candidates; a slot freed elsewhere goes to the next waiter, and a
    waiter with the same want but no such bound is not taken for unservable because of it."""
    a, b = worker("a", max_active=1), worker("b", max_active=1)
    line = backlog(4, a, b)
    await line.acquire(Want("m"), (), 1.0)
    await line.acquire(Want("m"), (), 1.0)
    sealed_to_b = asyncio.create_task(line.acquire(Want("m"), (), 5.0, only=(b,)))
    anyone = asyncio.create_task(line.acquire(Want("m"), (), 5.0))
    await asyncio.sleep(0)
    line.release(a)
    assert await anyone is a and not sealed_to_b.done()
    line.release(b)
    assert await sealed_to_b is b and len(line) == 0
