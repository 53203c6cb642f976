"""Recent history for the dashboards: counts and timing samples in fixed time buckets, bounded in memory.

A process notes events as they happen (`count`, `sample`); `snapshot` gives /jsonstats the last few minutes
bucket by bucket (counts, and p50/p99 of the samples), so a chart needs no history of its own.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any


class _Bucket:
    __slots__ = ("counts", "samples", "seen", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.counts: dict[str, float] = {}
        self.samples: dict[str, list[float]] = {}
        self.seen: dict[str, int] = {}  # samples offered, kept or not


class Series:
    """The last `length` buckets of `bucket_s` seconds each; at most `max_samples` samples per name and bucket
    are kept (a uniform choice among all offered), so memory stays bounded under any load."""

    def __init__(self, bucket_s: float = 2.0, length: int = 90, max_samples: int = 512,
                 clock: Callable[[], float] = time.time) -> None:
        self.bucket_s = bucket_s
        self.length = length
        self.max_samples = max_samples
        self.clock = clock
        self._buckets: deque[_Bucket] = deque(maxlen=length)
        self._rng = random.Random()

    def _current(self) -> _Bucket:
        start = math.floor(self.clock() / self.bucket_s) * self.bucket_s
        if not self._buckets or self._buckets[-1].start < start:
            self._buckets.append(_Bucket(start))
        return self._buckets[-1]

    def count(self, name: str, n: float = 1.0) -> None:
        bucket = self._current()
        bucket.counts[name] = bucket.counts.get(name, 0.0) + n

    def sample(self, name: str, value: float) -> None:
        bucket = self._current()
        kept = bucket.samples.setdefault(name, [])
        seen = bucket.seen[name] = bucket.seen.get(name, 0) + 1
        if len(kept) < self.max_samples:
            kept.append(value)
        else:  # reservoir sampling: every sample offered had the same chance to be kept
            slot = self._rng.randrange(seen)
            if slot < self.max_samples:
                kept[slot] = value

    def snapshot(self) -> dict[str, Any]:
        """Every bucket of the window, oldest first, empty ones included so that the time axis is regular:
        `t` (bucket start, unix s), `counts[name]` and `p50[name]`/`p99[name]` (null where no sample)."""
        now = math.floor(self.clock() / self.bucket_s) * self.bucket_s
        starts = [now - (self.length - 1 - i) * self.bucket_s for i in range(self.length)]
        by_start = {b.start: b for b in self._buckets}
        counts = sorted({n for b in self._buckets for n in b.counts})
        sampled = sorted({n for b in self._buckets for n in b.samples})
        out: dict[str, Any] = {"bucket_s": self.bucket_s, "t": starts,
                               "counts": {n: [0.0] * self.length for n in counts},
                               "p50": {n: [None] * self.length for n in sampled},
                               "p99": {n: [None] * self.length for n in sampled}}
        for i, start in enumerate(starts):
            bucket = by_start.get(start)
            if bucket is None:
                continue
            for name, n in bucket.counts.items():
                out["counts"][name][i] = n
            for name, values in bucket.samples.items():
                ordered = sorted(values)
                out["p50"][name][i] = round(quantile(ordered, 0.5), 2)
                out["p99"][name][i] = round(quantile(ordered, 0.99), 2)
        return out

    def recent(self, name: str, last_s: float = 60.0) -> dict[str, Any]:
        """The last `last_s` seconds of the samples of `name`: how many, their p50 and p99."""
        since = self.clock() - last_s
        buckets = [b for b in self._buckets if b.start + self.bucket_s > since]
        values = sorted(v for b in buckets for v in b.samples.get(name, ()))
        return {"n": sum(b.seen.get(name, 0) for b in buckets),
                "p50": round(quantile(values, 0.5), 2) if values else None,
                "p99": round(quantile(values, 0.99), 2) if values else None}


def quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of sorted values."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
