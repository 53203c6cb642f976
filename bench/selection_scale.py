"""What one routing decision costs the proxy as the network grows from 10 to 10,000 workers.

One decision is what the proxy does per request: choose (price cap, region), then record the answer's
timings and release the slot. Workers have mixed prices, regions and speeds; half the slots are busy, so
the index is exercised the way a loaded network would. A linear scan over the same workers (what a
"least loaded" search costs) is timed alongside for scale.

    .venv/bin/python bench/selection_scale.py
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from cocoon.config import SelectionConfig
from cocoon.proxy.reputation import ReputationBook
from cocoon.proxy.selection import Selector
from cocoon.wire.messages import WorkerParams

SIZES = (10, 100, 1_000, 10_000)
DECISIONS = 20_000


@dataclass(eq=False)
class Worker:
    key: str
    name: str
    params: WorkerParams


def build(n: int, rng: random.Random) -> tuple[Selector[Worker], list[Worker]]:
    sel: Selector[Worker] = Selector(SelectionConfig(), ReputationBook(keep_s=1e9), rng=rng)
    workers = [Worker(f"k{i}", f"w{i}", WorkerParams(models=["m"], coefficient=rng.choice((800, 1000, 1200, 1500)),
                                                     max_active_requests=4, region=rng.choice(("eu", "us"))))
               for i in range(n)]
    for w in workers:
        sel.add(w)
        for _ in range(3):  # past probation, with its own speed
            sel.record_stream(w, rng.uniform(100, 800), rng.uniform(500, 5000), 100)
    for w in workers:  # half the slots busy
        for _ in range(2):
            sel.choose("m", w.params.region)
    return sel, workers


def per_decision_us(n: int) -> tuple[float, float]:
    rng = random.Random(n)
    sel, workers = build(n, rng)
    wants = [(rng.choice(("", "", "eu")), rng.choice((None, None, 1200))) for _ in range(DECISIONS)]
    started = time.perf_counter()
    for region, cap in wants:
        w = sel.choose("m", region, cap)
        if w is not None:
            sel.record_stream(w, 300.0, 2000.0, 100)
            sel.release(w)
    ours = (time.perf_counter() - started) / DECISIONS * 1e6
    loads = {w: rng.randint(0, 3) for w in workers}
    scans = max(DECISIONS // max(n // 10, 1), 20)
    started = time.perf_counter()
    for region, cap in wants[:scans]:
        min((w for w in workers if loads[w] < 4 and (not region or w.params.region == region)
             and (cap is None or w.params.coefficient <= cap)), key=lambda w: loads[w], default=None)
    linear = (time.perf_counter() - started) / scans * 1e6
    return ours, linear


def main() -> None:
    print(f"{'workers':>8} {'choose+record+release µs':>25} {'linear scan µs':>15}")
    results = {}
    for n in SIZES:
        results[n] = per_decision_us(n)
        print(f"{n:>8} {results[n][0]:>25.1f} {results[n][1]:>15.1f}")
    small, large = results[SIZES[0]][0], results[SIZES[-1]][0]
    print(f"ratio {SIZES[-1]} / {SIZES[0]} workers: ×{large / small:.2f} per decision "
          f"(a linear scan: ×{results[SIZES[-1]][1] / results[SIZES[0]][1]:.0f})")


if __name__ == "__main__":
    main()
