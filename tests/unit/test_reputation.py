"""Moving estimates, benching and forgetting in the reputation book."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cocoon.config import SelectionConfig
from cocoon.proxy.reputation import Reputation, ReputationBook

CFG = SelectionConfig(reference_tokens=100, load_weight=1.0)


def test_streamed_answers_measure_first_token_and_rate_separately() -> None:
    rep = Reputation(key="k", name="w")
    assert rep.expected_ms(0, 4, CFG) == math.inf  # nothing measured yet
    rep.record_stream(ttft_ms=200, generation_ms=990, tokens=100)
    assert rep.ttft_ms == 200 and rep.ms_per_token == pytest.approx(10)
    rep.record_stream(ttft_ms=400, generation_ms=990, tokens=100)
    assert rep.ttft_ms == pytest.approx(240)  # moves a fifth of the way
    assert rep.expected_ms(0, 4, CFG) == pytest.approx(240 + 100 * 10)
    assert rep.expected_ms(2, 4, CFG) == pytest.approx((240 + 1000) * 1.5)


def test_whole_answers_scale_both_estimates() -> None:
    rep = Reputation(key="k", name="w")
    rep.record_whole(total_ms=1100, tokens=10)  # no split known: first token costs like the others, twice
    assert rep.ttft_ms == pytest.approx(200) and rep.ms_per_token == pytest.approx(100)
    rep.record_whole(total_ms=2 * (200 + 9 * 100), tokens=10)  # twice as slow as predicted
    assert rep.ttft_ms == pytest.approx(240) and rep.ms_per_token == pytest.approx(120)


def test_failures_lower_the_success_rate_and_bench_in_doubling_steps() -> None:
    cfg = SelectionConfig(bench_after_failures=2, bench_s=5, bench_max_s=12)
    rep = Reputation(key="k", name="w")
    assert not rep.record_failure(100, cfg)
    assert rep.record_failure(100, cfg) and rep.benched_until == 105
    assert not rep.record_failure(200, cfg)
    assert rep.record_failure(200, cfg) and rep.benched_until == 210
    rep.record_failure(300, cfg)
    assert rep.record_failure(300, cfg) and rep.benched_until == 312  # capped
    assert rep.success == pytest.approx(0.9**6)
    rep.record_stream(10, 10, 2)
    assert rep.benches == 0 and rep.failure_streak == 0 and rep.success > 0.9**6


def test_usage_beyond_bounds_benches_at_once_for_longer_each_time() -> None:
    """Issue 15 item 2: a worker reporting more tokens than its request could produce loses reputation, and an
    answer right after does not wash it out."""
    cfg = SelectionConfig(bench_after_failures=3, bench_s=5, bench_max_s=12)
    rep = Reputation(key="k", name="w")
    assert rep.record_misreport(100, cfg) and rep.benched_until == 105 and rep.success == pytest.approx(0.9)
    rep.record_stream(10, 10, 2)
    assert rep.benched_until == 105
    assert rep.record_misreport(200, cfg) and rep.benched_until == 210
    rep.record_misreport(300, cfg)
    assert rep.benched_until == 312 and rep.misreports == 3  # capped
    assert rep.summary(now=300).misreports == 3


def test_the_book_keeps_keys_across_reconnects_and_forgets_long_gone_ones() -> None:
    book = ReputationBook(keep_s=60)
    a = book.attach("a", "worker-a", now=0)
    book.attach("b", "worker-b", now=0)
    a.answered = 5
    book.detach(a, now=10)
    assert book.attach("a", "worker-a2", now=20) is a and a.name == "worker-a2" and a.links == 1
    book.detach(a, now=30)
    book.attach("c", "worker-c", now=89)
    assert book.get("a") is a
    book.attach("d", "worker-d", now=91)  # "a" has been gone for more than 60 s
    assert book.get("a") is None and book.get("b") is not None  # "b" never left
    summary = {s.key: s for s in book.summaries(now=91)}
    assert set(summary) == {"b", "c", "d"} and summary["b"].connected


def test_a_restarted_proxy_takes_back_what_it_learned(tmp_path: Path) -> None:
    cfg = SelectionConfig(bench_after_failures=1)
    book = ReputationBook(keep_s=100)
    fast = book.attach("key-fast", "fast", now=0)
    fast.record_stream(ttft_ms=50, generation_ms=990, tokens=100)
    gone = book.attach("key-gone", "gone", now=0)
    assert gone.record_failure(now=0, cfg=cfg)  # benched in the old run's clock
    book.detach(gone, now=1)
    path = tmp_path / "reputation.json"
    book.save(path)
    assert path.stat().st_mode & 0o777 == 0o600

    restarted = ReputationBook(keep_s=100)
    assert restarted.load(path, now=5000) == 2
    back = restarted.get("key-fast")
    assert back is not None and back.answered == 1 and back.ttft_ms == 50 and back.links == 0
    benched = restarted.get("key-gone")
    assert benched is not None and benched.failed == 1 and benched.benched_until == 0.0
    # a worker that returns finds its record; one that does not is forgotten after keep_s
    assert restarted.attach("key-fast", "fast", now=5050) is back and back.links == 1
    restarted.attach("key-new", "new", now=5101)
    assert restarted.get("key-gone") is None and restarted.get("key-fast") is back


def test_an_unreadable_saved_book_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "reputation.json"
    path.write_text("{not json")
    book = ReputationBook(keep_s=100)
    assert book.load(path, now=0) == 0 and book.summaries(0) == []
    assert book.load(tmp_path / "missing.json", now=0) == 0
