"""Backpressure: when every matching worker is busy, a request waits its turn, within bounds.

At most `depth` requests wait, each for at most the time it is given; then it is answered 503 with
Retry-After. A slot that frees up goes straight to the oldest waiter it can serve (no thundering herd, no
request overtaken by a later one asking for the same thing).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Generic

from cocoon.core.errors import ApiError, ErrorCode
from cocoon.proxy.selection import Selector, W


@dataclass(frozen=True)
class Want:
    model: str
    region: str = ""
    max_coefficient: int | None = None
    features: tuple[str, ...] = ()  # tool-calling and structured-output fields: only some engines take them

    @property
    def tools(self) -> bool:
        return bool(self.features)

    def describe(self) -> str:
        where = f" in region `{self.region}`" if self.region else ""
        price = f" at coefficient ≤ {self.max_coefficient}" if self.max_coefficient is not None else ""
        return f"`{self.model}`{where}{price}"


@dataclass(eq=False)
class _Waiter(Generic[W]):
    want: Want
    exclude: tuple[W, ...]
    only: tuple[W, ...] | None  # the only workers it may go to (a sealed request's candidates), or any
    future: asyncio.Future[W]

    @property
    def narrowed(self) -> bool:
        """Whether it may go to fewer workers than its `want` alone says."""
        return bool(self.exclude) or self.only is not None


class Backlog(Generic[W]):
    def __init__(self, selector: Selector[W], depth: int) -> None:
        self.selector = selector
        self.depth = depth
        self._waiters: list[_Waiter[W]] = []  # oldest first

    def __len__(self) -> int:
        return len(self._waiters)

    async def acquire(self, want: Want, exclude: tuple[W, ...], wait_s: float, only: tuple[W, ...] | None = None
                      ) -> W:
        """A worker now busy with this request, not in `exclude` and, when given, one of `only`; raises 503 when
        none frees up within `wait_s`."""
        worker = self.selector.choose(want.model, want.region, want.max_coefficient, exclude, want.tools, only)
        if worker is not None:
            return worker
        if not self.selector.serves(want.model, want.region, want.max_coefficient, want.tools):
            if want.tools and self.selector.serves(want.model, want.region, want.max_coefficient):
                raise ApiError(400, f"no worker serving {want.describe()} supports `{want.features[0]}`",
                               code=ErrorCode.UNSUPPORTED_PARAMETER, param=want.features[0])
            raise ApiError(503, f"no connected worker serves {want.describe()}; retry later",
                           type="service_unavailable", code=ErrorCode.NO_WORKER_AVAILABLE, retry_after=2)
        if len(self._waiters) >= self.depth:
            raise ApiError(503, f"every worker serving {want.describe()} is busy and {self.depth} requests are "
                                "already waiting; retry later", type="service_unavailable", code=ErrorCode.QUEUE_FULL,
                           retry_after=1)
        if wait_s <= 0:
            raise self._busy(want, wait_s)
        waiter = _Waiter(want, exclude, only, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(waiter.future, wait_s)
        except BaseException as exc:  # timed out or cancelled: leave the line
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.future.done() and not waiter.future.cancelled():
                # handed a worker in the same instant we gave up: pass the slot on
                self.release(waiter.future.result())
            if isinstance(exc, TimeoutError):
                raise self._busy(want, wait_s) from None
            raise

    def release(self, worker: W) -> None:
        self.selector.release(worker)
        self.serve_waiting()

    def serve_waiting(self) -> None:
        """Hand free slots to waiters, oldest first. Call when a slot frees up or a worker arrives."""
        if not self._waiters:
            return
        unservable: set[Want] = set()  # a want that found nothing will find nothing for a later waiter either
        kept: list[_Waiter[W]] = []
        for waiter in self._waiters:
            if waiter.future.done() or (not waiter.narrowed and waiter.want in unservable):
                kept.append(waiter)
                continue
            want = waiter.want
            worker = self.selector.choose(want.model, want.region, want.max_coefficient, waiter.exclude,
                                          want.tools, waiter.only)
            if worker is None:
                if not waiter.narrowed:
                    unservable.add(want)
                kept.append(waiter)
            else:
                waiter.future.set_result(worker)
        self._waiters = kept

    @staticmethod
    def _busy(want: Want, wait_s: float) -> ApiError:
        return ApiError(503, f"every worker serving {want.describe()} stayed busy for {max(wait_s, 0):.1f}s; "
                             "retry later", type="service_unavailable", code=ErrorCode.NO_WORKER_AVAILABLE,
                        retry_after=1)
