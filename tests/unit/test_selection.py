"""Worker selection: latency and load, price and region, probation share, benching, reputation by key."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from cocoon.config import SelectionConfig
from cocoon.proxy.reputation import ReputationBook
from cocoon.proxy.selection import Selector
from cocoon.wire.messages import WorkerParams


@dataclass(eq=False)
class FakeWorker:
    key: str
    name: str
    params: WorkerParams


def worker(name: str, *, coefficient: int = 1000, region: str = "", max_active: int = 4,
           key: str | None = None, tools: bool = False) -> FakeWorker:
    return FakeWorker(key or f"key-{name}", name, WorkerParams(models=["m"], coefficient=coefficient,
                                                               max_active_requests=max_active, region=region,
                                                               supports_tools=tools))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def selector(clock: Clock | None = None, **cfg: object) -> Selector[FakeWorker]:
    settings = {"probation_share": 0.0, **cfg}
    return Selector(SelectionConfig(**settings), ReputationBook(keep_s=3600), clock=clock or Clock(),  # type: ignore[arg-type]
                    rng=random.Random(1))


def graduate(sel: Selector[FakeWorker], w: FakeWorker, ttft_ms: float, ms_per_token: float) -> None:
    for _ in range(max(sel.cfg.probation_requests, 1)):
        sel.record_stream(w, ttft_ms, ms_per_token * 99, 100)


def test_the_fastest_idle_worker_wins_and_load_spreads_the_rest() -> None:
    sel = selector()
    fast, slow = worker("fast"), worker("slow")
    sel.add(fast)
    sel.add(slow)
    graduate(sel, fast, 100, 10)
    graduate(sel, slow, 300, 20)
    assert [sel.choose("m") for _ in range(1)] == [fast]
    sel.release(fast)
    # fast: 1380 ms idle, grows by a quarter per active request; slow: 2860 ms idle
    picks = [sel.choose("m") for _ in range(8)]
    assert picks.count(fast) == 4 and picks.count(slow) == 4  # every slot of both, fast ones first
    assert picks[:3] == [fast, fast, fast]
    assert sel.choose("m") is None  # all full
    sel.release(slow)
    assert sel.choose("m") is slow


def test_price_cap_and_region_are_hard_filters() -> None:
    sel = selector(probation_requests=0)
    cheap_eu, dear_us = worker("eu", coefficient=800, region="eu"), worker("us", coefficient=1500, region="us")
    for w in (cheap_eu, dear_us):
        sel.add(w)
        graduate(sel, w, 100, 10)
    sel.record_stream(dear_us, 10, 10, 2)  # make the expensive one much faster
    assert sel.choose("m", max_coefficient=1000) is cheap_eu
    assert sel.choose("m", region="us") is dear_us
    assert sel.choose("m", region="us", max_coefficient=1000) is None
    assert not sel.serves("m", region="us", max_coefficient=1000)
    assert sel.serves("m", region="eu", max_coefficient=800)
    assert not sel.serves("m", region="asia") and sel.choose("m", region="asia") is None
    assert not sel.serves("other-model")


def test_newcomers_get_the_configured_share_and_the_least_tried_first() -> None:
    sel = selector(probation_share=0.25, probation_requests=1000)
    veteran = worker("veteran", max_active=100, key="v")
    sel.add(veteran)
    sel.reputations.get("v").ttft_ms, sel.reputations.get("v").ms_per_token = 50.0, 5.0  # type: ignore[union-attr]
    sel.reputations.get("v").answered = 1000  # type: ignore[union-attr]
    sel.remove(veteran)
    sel.add(veteran)  # re-added with its record: ranked, not on probation
    new1, new2 = worker("new1", max_active=100), worker("new2", max_active=100)
    sel.add(new1)
    sel.add(new2)
    picks = Counter()
    for _ in range(100):
        w = sel.choose("m")
        assert w is not None
        picks[w.name] += 1
        sel.release(w)
        if w is not veteran:
            sel.record_stream(w, 500, 500, 10)
    assert picks["veteran"] == 75
    assert picks["new1"] + picks["new2"] == 25 and abs(picks["new1"] - picks["new2"]) <= 1


def test_probation_workers_take_everything_when_no_one_is_ranked_yet() -> None:
    sel = selector(probation_share=0.1)
    ws = [worker(f"w{i}", max_active=1) for i in range(3)]
    for w in ws:
        sel.add(w)
    assert {sel.choose("m") for _ in range(3)} == set(ws)


def test_repeated_failures_bench_with_exponential_backoff() -> None:
    clock = Clock()
    sel = selector(clock, probation_requests=0, bench_after_failures=2, bench_s=10, bench_max_s=25)
    flaky, steady = worker("flaky"), worker("steady")
    sel.add(flaky)
    sel.add(steady)
    graduate(sel, flaky, 10, 1)
    graduate(sel, steady, 500, 50)

    def pick() -> FakeWorker | None:
        w = sel.choose("m")
        if w is not None:
            sel.release(w)
        return w

    assert pick() is flaky
    sel.record_failure(flaky)
    assert pick() is flaky  # one failure is not enough
    sel.record_failure(flaky)
    assert pick() is steady  # benched for 10 s
    clock.now += 10
    assert pick() is flaky
    sel.record_failure(flaky)
    sel.record_failure(flaky)
    clock.now += 10
    assert pick() is steady  # second bench in a row: 20 s
    clock.now += 10
    assert pick() is flaky
    sel.record_failure(flaky)
    sel.record_failure(flaky)
    clock.now += 24.9
    assert pick() is steady  # third: 40 s, capped at 25 s
    clock.now += 0.1
    assert pick() is flaky
    sel.record_stream(flaky, 10, 10, 2)  # a success forgives the bench history
    sel.record_failure(flaky)
    sel.record_failure(flaky)
    clock.now += 10
    assert pick() is flaky


def test_reputation_and_bench_survive_a_reconnect_under_the_same_key() -> None:
    clock = Clock()
    sel = selector(clock, bench_after_failures=1, bench_s=30)
    first = worker("w", key="k1")
    sel.add(first)
    graduate(sel, first, 100, 10)
    sel.record_failure(first)
    sel.remove(first)
    again = worker("w", key="k1")
    sel.add(again)
    assert sel.describe(again)["probation"] is False and sel.describe(again)["benched"] is True
    assert sel.choose("m") is None
    clock.now += 30
    assert sel.choose("m") is again
    rep = sel.reputations.get("k1")
    assert rep is not None and rep.answered == 3 and rep.failed == 1 and rep.links == 1


def test_a_failure_reported_after_the_link_is_gone_still_counts() -> None:
    sel = selector()
    w = worker("w", key="k")
    sel.add(w)
    assert sel.choose("m") is w
    sel.remove(w)
    sel.record_failure(w)
    sel.release(w)
    rep = sel.reputations.get("k")
    assert rep is not None and rep.failed == 1


def test_excluded_workers_are_skipped_only_for_that_choice() -> None:
    sel = selector(probation_requests=0)
    a, b = worker("a"), worker("b")
    sel.add(a)
    sel.add(b)
    graduate(sel, a, 10, 1)
    graduate(sel, b, 20, 2)
    assert sel.choose("m", exclude=(a,)) is b
    assert sel.choose("m") is a
    assert sel.choose("m", exclude=(a, b)) is None


@pytest.mark.parametrize("n", [10, 10_000])
def test_many_workers_keep_the_choice_correct(n: int) -> None:
    sel = selector(probation_requests=0)
    rng = random.Random(3)
    ws = [worker(f"w{i}", coefficient=rng.choice([800, 1000, 1200]), max_active=2) for i in range(n)]
    for w in ws:
        sel.add(w)
        sel.record_stream(w, rng.uniform(50, 500), rng.uniform(100, 1000), 20)
    best = min((w for w in ws if w.params.coefficient <= 1000),
               key=lambda w: sel.reputations.get(w.key).ttft_ms + 128 * sel.reputations.get(w.key).ms_per_token)  # type: ignore[union-attr]
    assert sel.choose("m", max_coefficient=1000) is best


def test_requests_using_tools_reach_only_workers_whose_engine_takes_them() -> None:
    sel = selector()
    plain, capable = worker("plain", max_active=8), worker("capable", max_active=8, tools=True)
    sel.add(plain)
    sel.add(capable)
    assert {sel.choose("m", tools=True) for _ in range(6)} == {capable}
    assert {sel.choose("m") for _ in range(8)} == {plain, capable}  # plain requests go anywhere
    sel.remove(capable)
    assert not sel.serves("m", tools=True) and sel.serves("m")
    assert sel.choose("m", tools=True) is None


def test_a_choice_among_named_workers_takes_the_best_of_them_within_the_request_s_bounds() -> None:
    """`only` (a sealed request's candidates): the best of those workers, never another, under the same rules."""
    sel = selector(probation_requests=0)
    fastest, a, b = worker("fastest"), worker("a", max_active=1), worker("b", coefficient=1500, region="us")
    tools = worker("tools", tools=True)
    for w, ttft in ((fastest, 10), (a, 50), (b, 20), (tools, 30)):
        sel.add(w)
        graduate(sel, w, ttft, 1)
    assert sel.choose("m", only=(a, b)) is b  # the faster of the two; `fastest` is not one of them
    assert sel.choose("m", only=(a, b), max_coefficient=1000) is a  # b is dearer than the cap
    assert sel.choose("m", only=(a, b), max_coefficient=1000) is None  # a is full (max_active 1)
    sel.release(a)
    assert sel.choose("m", only=(a, b), region="eu") is None  # neither is in that region
    assert sel.choose("m", only=(a, b), exclude=(b,)) is a
    assert sel.choose("m", only=(a, tools), tools=True) is tools  # a's engine takes no tools
    assert sel.choose("m", only=()) is None
    assert sel.choose("other-model", only=(fastest,)) is None


def test_a_choice_among_named_workers_looks_at_those_alone() -> None:
    """Its cost stays flat however many workers are linked: only the named ones are scored, no other is marked."""
    sel = selector(probation_requests=0)
    ws = [worker(f"w{i}") for i in range(1000)]
    for w in ws:
        sel.add(w)
        graduate(sel, w, 100, 1)
    scored: list[object] = []
    score = sel._score
    sel._score = lambda entry: scored.append(entry.worker) or score(entry)  # type: ignore[method-assign]
    chosen = sel.choose("m", only=(ws[5], ws[700]))
    assert chosen in (ws[5], ws[700])
    assert set(scored) <= {ws[5], ws[700]}


def test_probation_turns_are_shared_between_named_and_open_choices() -> None:
    """A newcomer among a sealed request's candidates gets its probation share like any other newcomer."""
    sel = selector(probation_share=0.5, probation_requests=3)
    old, new = worker("old", max_active=100), worker("new", max_active=100)
    sel.add(old)
    graduate(sel, old, 10, 1)
    sel.add(new)
    picks = Counter(sel.choose("m", only=(old, new)).name for _ in range(10))  # type: ignore[union-attr]
    assert picks == {"old": 5, "new": 5}
