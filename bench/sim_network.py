"""Simulate one proxy routing a request trace over 1,000-10,000 workers, with three selection policies.

The `cocoon` policy is the proxy's real selection code (cocoon.proxy.selection.Selector) on simulated
time; `random` and `round-robin` pick among the same eligible workers (free slot, price cap, region). Every
policy sees the same workers and the same requests, and the same retry rules: a worker that fails before
the first token is left for another (3 attempts), one that fails after it fails the request.

Workers differ in time to first token, token rate, slots, price, region (network distance) and failure
rate; a busy worker is slower (its batch is shared). The selection code never sees these truths, only the
timings and failures it observes, as the proxy would.

    .venv/bin/python bench/sim_network.py [--workers 1000] [--requests 60000] [--load 0.8] [--seed 1]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cocoon.config import SelectionConfig
from cocoon.proxy.reputation import ReputationBook
from cocoon.proxy.selection import Selector
from cocoon.wire.messages import WorkerParams

MODEL = "m"
REGIONS = {"eu": 0.005, "us": 0.040, "asia": 0.090}  # one-way proxy ↔ worker delay, seconds
PRICES = (800, 1000, 1200, 1500, 2000)
FIRST_TOKEN_TIMEOUT_S = 10.0
QUEUE_TIMEOUT_S = 5.0
MAX_ATTEMPTS = 3
BATCH_SLOWDOWN = 0.7  # a full worker takes 1.7× as long per request as an idle one
WARMUP_SHARE = 0.2  # the first fifth of the trace is not measured: every policy starts cold


@dataclass(eq=False)
class SimWorker:
    key: str
    name: str
    params: WorkerParams
    ttft_s: float
    s_per_token: float
    fail_p: float
    active: int = 0
    earned: float = 0.0
    served: int = 0


@dataclass(eq=False)
class SimRequest:
    arrival: float
    tokens: int
    region: str
    max_coefficient: int | None
    draws: list[float]  # the request's own random numbers, so every policy meets the same luck
    tried: list[SimWorker] = field(default_factory=list)
    started: float = 0.0  # when the current attempt was sent
    first_token: float | None = None


class Policy(Protocol):
    def choose(self, req: SimRequest) -> SimWorker | None: ...
    def release(self, w: SimWorker) -> None: ...
    def succeeded(self, w: SimWorker, ttft_s: float, generation_s: float, tokens: int) -> None: ...
    def failed(self, w: SimWorker) -> None: ...


class CocoonPolicy:
    def __init__(self, workers: list[SimWorker], clock: Callable[[], float], seed: int) -> None:
        self.selector: Selector[SimWorker] = Selector(SelectionConfig(), ReputationBook(keep_s=1e9), clock=clock,
                                                      rng=random.Random(seed))
        for w in workers:
            self.selector.add(w)

    def choose(self, req: SimRequest) -> SimWorker | None:
        return self.selector.choose(MODEL, req.region, req.max_coefficient, req.tried)

    def release(self, w: SimWorker) -> None:
        self.selector.release(w)

    def succeeded(self, w: SimWorker, ttft_s: float, generation_s: float, tokens: int) -> None:
        self.selector.record_stream(w, ttft_s * 1000, generation_s * 1000, tokens)

    def failed(self, w: SimWorker) -> None:
        self.selector.record_failure(w)


class _Blind:
    """Baselines: know only which workers are eligible now; learn nothing."""

    def __init__(self, workers: list[SimWorker], seed: int) -> None:
        self.workers = workers
        self.by_region: dict[str, list[SimWorker]] = {}
        for w in workers:
            self.by_region.setdefault(w.params.region, []).append(w)
        self.rng = random.Random(seed)

    def pool(self, req: SimRequest) -> list[SimWorker]:
        return self.by_region[req.region] if req.region else self.workers

    @staticmethod
    def eligible(w: SimWorker, req: SimRequest) -> bool:
        return (w.active < w.params.max_active_requests and w not in req.tried
                and (req.max_coefficient is None or w.params.coefficient <= req.max_coefficient))

    def release(self, w: SimWorker) -> None:
        pass

    def succeeded(self, w: SimWorker, ttft_s: float, generation_s: float, tokens: int) -> None:
        pass

    def failed(self, w: SimWorker) -> None:
        pass


class RandomPolicy(_Blind):
    def choose(self, req: SimRequest) -> SimWorker | None:
        pool = self.pool(req)
        for _ in range(32):  # rejection sampling: cheap while most workers have a free slot
            w = pool[self.rng.randrange(len(pool))]
            if self.eligible(w, req):
                return w
        candidates = [w for w in pool if self.eligible(w, req)]
        return self.rng.choice(candidates) if candidates else None


class RoundRobinPolicy(_Blind):
    def __init__(self, workers: list[SimWorker], seed: int) -> None:
        super().__init__(workers, seed)
        self.next: dict[str, int] = {}

    def choose(self, req: SimRequest) -> SimWorker | None:
        pool = self.pool(req)
        start = self.next.get(req.region, 0)
        for i in range(len(pool)):
            w = pool[(start + i) % len(pool)]
            if self.eligible(w, req):
                self.next[req.region] = (start + i + 1) % len(pool)
                return w
        return None


def make_workers(n: int, rng: random.Random) -> list[SimWorker]:
    workers = []
    for i in range(n):
        tokens_per_s = rng.lognormvariate(math.log(40), 0.6)  # median 40, most within 12-130
        fail_p = rng.choices((0.002, 0.05, 0.5), weights=(90, 8, 2))[0]
        price = rng.choices(PRICES, weights=(2, 4, 2, 1, 1))[0]
        params = WorkerParams(models=[MODEL], coefficient=price, max_active_requests=rng.choice((2, 4, 8)),
                              region=rng.choices(list(REGIONS), weights=(5, 3, 2))[0])
        workers.append(SimWorker(key=f"k{i}", name=f"w{i}", params=params,
                                 ttft_s=rng.lognormvariate(math.log(0.3), 0.5), s_per_token=1 / tokens_per_s,
                                 fail_p=fail_p))
    return workers


def make_trace(workers: list[SimWorker], n: int, load: float, rng: random.Random) -> list[SimRequest]:
    mean_tokens = 200
    service_s = sum(w.ttft_s + mean_tokens * w.s_per_token for w in workers) / len(workers)
    capacity = sum(w.params.max_active_requests for w in workers) / (service_s * (1 + BATCH_SLOWDOWN / 2))
    rate = load * capacity
    t = 0.0
    trace = []
    for _ in range(n):
        t += rng.expovariate(rate)
        region = rng.choices(("", "eu", "us"), weights=(85, 10, 5))[0]
        cap = rng.choices((None, 1200), weights=(80, 20))[0]
        tokens = max(1, min(int(rng.lognormvariate(math.log(mean_tokens), 0.7)), 2000))
        trace.append(SimRequest(t, tokens, region, cap, [rng.random() for _ in range(2 * MAX_ATTEMPTS)]))
    return trace


@dataclass
class Result:
    name: str
    latencies: list[float]
    ttfts: list[float]
    ok: int
    failed: int
    throughput: float  # answers per simulated second while the trace was arriving
    earnings: list[float]
    mean_price: float
    wall_s: float

    def pct(self, values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else math.nan


def simulate(name: str, workers: list[SimWorker], trace: list[SimRequest],
             make_policy: Callable[[Callable[[], float]], Policy]) -> Result:
    now = 0.0
    policy = make_policy(lambda: now)
    events: list[tuple[float, int, str, SimRequest, SimWorker | None]] = []
    seq = itertools.count()
    queue: list[SimRequest] = []
    measured_from = trace[int(len(trace) * WARMUP_SHARE)].arrival
    measured_until = trace[-1].arrival  # throughput counts answers finished while requests kept coming
    in_window = 0
    latencies: list[float] = []
    ttfts: list[float] = []
    ok = failed = 0
    price_sum = 0.0

    def push(at: float, kind: str, req: SimRequest, w: SimWorker | None = None) -> None:
        heapq.heappush(events, (at, next(seq), kind, req, w))

    def finish(req: SimRequest, success: bool) -> None:
        nonlocal ok, failed, in_window
        if req.arrival < measured_from:
            return
        if success:
            ok += 1
            in_window += now <= measured_until
            latencies.append(now - req.arrival)
            ttfts.append((req.first_token or now) - req.arrival)
        else:
            failed += 1

    def dispatch(req: SimRequest) -> bool:
        """Start the request on a worker; False when none is free (it may wait)."""
        nonlocal price_sum
        w = policy.choose(req)
        if w is None:
            return False
        w.active += 1
        req.started = now
        slowdown = 1 + BATCH_SLOWDOWN * (w.active - 1) / w.params.max_active_requests
        attempt = len(req.tried)
        fate, when = req.draws[2 * attempt], req.draws[2 * attempt + 1]
        rtt = 2 * REGIONS[w.params.region]
        ttft = rtt + w.ttft_s * slowdown
        generation = req.tokens * w.s_per_token * slowdown
        if fate < w.fail_p:
            kind = ("stall", "crash", "midstream")[int(fate / w.fail_p * 3)]
            if kind == "stall":
                push(now + FIRST_TOKEN_TIMEOUT_S, "retry", req, w)
            elif kind == "crash":
                push(now + when * ttft, "retry", req, w)
            else:
                push(now + ttft + when * generation, "broken", req, w)
        else:
            push(now + ttft + generation, "done", req, w)
            req.first_token = now + ttft
            if req.arrival >= measured_from:
                price_sum += w.params.coefficient
            w.earned += req.tokens * w.params.coefficient / 1000
            w.served += 1
        return True

    def place(req: SimRequest) -> None:
        if not dispatch(req):
            queue.append(req)

    def drain() -> None:
        stuck: set[tuple[str, int | None]] = set()
        kept = []
        for req in queue:
            want = (req.region, req.max_coefficient)
            if now - req.arrival > QUEUE_TIMEOUT_S:
                finish(req, False)
            elif (req.tried or want not in stuck) and dispatch(req):
                continue
            else:
                if not req.tried:
                    stuck.add(want)
                kept.append(req)
        queue[:] = kept

    started = time.perf_counter()
    arrivals = iter(trace)
    upcoming = next(arrivals, None)
    while events or upcoming is not None:
        if upcoming is not None and (not events or upcoming.arrival <= events[0][0]):
            now = upcoming.arrival
            place(upcoming)
            upcoming = next(arrivals, None)
            continue
        now, _, kind, req, w = heapq.heappop(events)
        assert w is not None
        w.active -= 1
        if kind == "done":
            first = req.first_token or now
            policy.succeeded(w, first - req.started, now - first, req.tokens)
            policy.release(w)
            finish(req, True)
        else:
            policy.failed(w)
            policy.release(w)
            if kind == "broken":
                finish(req, False)
            else:
                req.tried.append(w)
                if len(req.tried) >= MAX_ATTEMPTS:
                    finish(req, False)
                else:
                    place(req)
        drain()
    for req in queue:
        finish(req, False)
    wall = time.perf_counter() - started
    return Result(name, latencies, ttfts, ok, failed, in_window / (measured_until - measured_from),
                  [w.earned for w in workers], price_sum / max(ok, 1), wall)


def gini(values: list[float]) -> float:
    ordered = sorted(values)
    total = sum(ordered)
    if not total:
        return 0.0
    weighted = sum((i + 1) * v for i, v in enumerate(ordered))
    return (2 * weighted) / (len(ordered) * total) - (len(ordered) + 1) / len(ordered)


def run(workers_n: int, requests: int, load: float, seed: int) -> list[Result]:
    policies: dict[str, Callable[[list[SimWorker], Callable[[], float]], Policy]] = {
        "cocoon": lambda ws, clock: CocoonPolicy(ws, clock, seed),
        "random": lambda ws, clock: RandomPolicy(ws, seed),
        "round-robin": lambda ws, clock: RoundRobinPolicy(ws, seed),
    }
    results = []
    for name, make in policies.items():
        workers = make_workers(workers_n, random.Random(seed))  # the same workers and trace for every policy
        trace = make_trace(workers, requests, load, random.Random(seed + 1))
        results.append(simulate(name, workers, trace, lambda clock, ws=workers, mk=make: mk(ws, clock)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=60_000)
    parser.add_argument("--load", type=float, default=0.8, help="offered load as a share of nominal capacity")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    results = run(args.workers, args.requests, args.load, args.seed)
    print(f"{args.workers} workers, {args.requests} requests ({WARMUP_SHARE:.0%} warm-up not measured), "
          f"offered load {args.load:.0%} of nominal capacity, seed {args.seed}")
    header = (f"{'policy':<12} {'req/s':>8} {'p50 s':>7} {'p99 s':>7} {'ttft p50':>9} {'ttft p99':>9} "
              f"{'failed':>7} {'price':>6} {'gini':>5} {'top10%':>7} {'idle':>5} {'sim wall s':>10}")
    print(header)
    rows = {}
    for r in results:
        earnings = sorted(r.earnings, reverse=True)
        top = sum(earnings[: max(len(earnings) // 10, 1)]) / max(sum(earnings), 1e-9)
        idle = sum(1 for e in earnings if e == 0) / len(earnings)
        rows[r.name] = {"rps": r.throughput, "p50": r.pct(r.latencies, 0.5), "p99": r.pct(r.latencies, 0.99),
                        "ttft50": r.pct(r.ttfts, 0.5), "ttft99": r.pct(r.ttfts, 0.99),
                        "failed": r.failed / max(r.ok + r.failed, 1)}
        row = rows[r.name]
        print(f"{r.name:<12} {row['rps']:>8.1f} {row['p50']:>7.2f} {row['p99']:>7.2f} {row['ttft50']:>9.3f} "
              f"{row['ttft99']:>9.3f} {row['failed']:>7.2%} {r.mean_price:>6.0f} {gini(r.earnings):>5.2f} "
              f"{top:>7.1%} {idle:>5.1%} {r.wall_s:>10.1f}")
    ours = rows["cocoon"]
    for other in ("random", "round-robin"):
        base = rows[other]
        print(f"cocoon / {other}: throughput ×{ours['rps'] / base['rps']:.2f}, "
              f"p50 latency ×{ours['p50'] / base['p50']:.2f}, p99 latency ×{ours['p99'] / base['p99']:.2f}, "
              f"ttft p99 ×{ours['ttft99'] / base['ttft99']:.2f}, "
              f"failed requests ×{ours['failed'] / base['failed'] if base['failed'] else math.nan:.2f}")

if __name__ == "__main__":
    main()
