"""What the proxy has learned about each worker key: speed, reliability, benching. Survives reconnects of the
worker (by key) and restarts of the proxy (saved on a clean stop)."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from cocoon.config import SelectionConfig, SpotCheckConfig
from cocoon.fsutil import SECRET_MODE, write_atomically
from cocoon.proxy.spotcheck import FAILED, PASSED, SpotEvidence

_LATENCY_ALPHA = 0.2  # weight of the newest sample in the moving latency estimates
_SUCCESS_ALPHA = 0.1  # ...and in the moving success rate
_MIN_SUCCESS = 0.05  # a worker that always fails still has a finite (terrible) score


@dataclass(eq=False)
class Reputation:
    key: str
    name: str
    ttft_ms: float | None = None  # moving estimate of time to first token, as measured at the proxy
    ms_per_token: float | None = None  # moving estimate of generation time per token after the first
    success: float = 1.0  # moving success rate
    answered: int = 0
    failed: int = 0
    failure_streak: int = 0
    benches: int = 0  # benches in a row without a success in between: the next one lasts twice as long
    benched_until: float = 0.0
    links: int = 0  # live connections with this key
    misreports: int = 0  # answers whose usage went beyond what their request could produce (charged at the bound)
    # spot checks (proxy/spotcheck.py) this worker took part in, by verdict, and the last mismatches as evidence
    spot_passed: int = 0
    spot_failed: int = 0  # its answer disagreed with two others
    spot_unresolved: int = 0
    spot_evidence: list[SpotEvidence] = field(default_factory=list)

    def on_probation(self, cfg: SelectionConfig) -> bool:
        return self.answered < cfg.probation_requests or self.ttft_ms is None

    def expected_ms(self, active: int, max_active: int, cfg: SelectionConfig) -> float:
        """Expected time to answer a reference-length request if it were sent now."""
        if self.ttft_ms is None or self.ms_per_token is None:
            return math.inf
        base = self.ttft_ms + cfg.reference_tokens * self.ms_per_token
        return base * (1.0 + cfg.load_weight * active / max_active) / max(self.success, _MIN_SUCCESS)

    def record_stream(self, ttft_ms: float, generation_ms: float, tokens: int) -> None:
        """A streamed answer: time to its first token and time for the tokens after it."""
        self.ttft_ms = _moving(self.ttft_ms, ttft_ms)
        if tokens > 1:
            self.ms_per_token = _moving(self.ms_per_token, generation_ms / (tokens - 1))
        elif self.ms_per_token is None:
            self.ms_per_token = ttft_ms  # one-token answers: assume a token costs what the first one did
        self._succeeded()

    def record_whole(self, total_ms: float, tokens: int) -> None:
        """A non-streamed answer: only the total is seen, so both estimates are scaled to explain it."""
        if self.ttft_ms is None or self.ms_per_token is None:
            # no split known yet: assume the first token costs as much as each later one
            per = total_ms / (max(tokens, 1) + 1)
            self.ttft_ms, self.ms_per_token = 2 * per, per
        else:
            predicted = self.ttft_ms + max(tokens - 1, 0) * self.ms_per_token
            scale = total_ms / predicted if predicted > 0 else 1.0
            self.ttft_ms = _moving(self.ttft_ms, self.ttft_ms * scale)
            self.ms_per_token = _moving(self.ms_per_token, self.ms_per_token * scale)
        self._succeeded()

    def _succeeded(self) -> None:
        self.answered += 1
        self.success += _SUCCESS_ALPHA * (1.0 - self.success)
        self.failure_streak = 0
        self.benches = 0

    def record_failure(self, now: float, cfg: SelectionConfig) -> bool:
        """Count a failure the worker caused; returns True when this failure benches it."""
        self.failed += 1
        self.success -= _SUCCESS_ALPHA * self.success
        self.failure_streak += 1
        if self.failure_streak < cfg.bench_after_failures:
            return False
        self.benched_until = now + min(cfg.bench_s * 2.0**self.benches, cfg.bench_max_s)
        self.benches += 1
        self.failure_streak = 0
        return True

    def record_misreport(self, now: float, cfg: SelectionConfig) -> bool:
        """The worker reported more tokens than its request could produce. No honest engine does: it costs the
        success rate a failure's worth and benches the worker at once, twice as long as last time (always True)."""
        self.misreports += 1
        self.success -= _SUCCESS_ALPHA * self.success
        self.benched_until = now + min(cfg.bench_s * 2.0 ** (self.misreports - 1), cfg.bench_max_s)
        return True

    def record_spot_check(self, verdict: str, evidence: SpotEvidence | None, blamed: bool, now: float,
                          cfg: SpotCheckConfig) -> bool:
        """A spot check this worker took part in; returns True when it benches the worker. Blamed (its answer
        disagreed with two others: another model, or another engine, behind the same name), it loses a failure's
        worth of success rate and, from the `bench_after`-th time, is benched for `bench_s`, doubled for every
        further one. An unresolved mismatch only keeps the evidence."""
        if evidence is not None and cfg.evidence_kept:
            self.spot_evidence = [*self.spot_evidence, evidence][-cfg.evidence_kept:]
        if verdict == PASSED or (verdict == FAILED and not blamed):
            self.spot_passed += 1
            return False
        if verdict != FAILED:
            self.spot_unresolved += 1
            return False
        self.spot_failed += 1
        self.success -= _SUCCESS_ALPHA * self.success
        if self.spot_failed < cfg.bench_after:
            return False
        self.benched_until = max(self.benched_until, now + cfg.bench_s * 2.0 ** (self.spot_failed - cfg.bench_after))
        return True

    def summary(self, now: float) -> ReputationSummary:
        return ReputationSummary(
            key=self.key, name=self.name, answered=self.answered, failed=self.failed,
            success=round(self.success, 4),
            ttft_ms=round(self.ttft_ms, 2) if self.ttft_ms is not None else None,
            tokens_per_s=round(1000.0 / self.ms_per_token, 2) if self.ms_per_token else None,
            benched_s=round(max(self.benched_until - now, 0.0), 3), connected=self.links > 0,
            misreports=self.misreports,
            spot_checks=SpotChecks(self.spot_passed, self.spot_failed, self.spot_unresolved, self.spot_evidence))


class SpotChecks(msgspec.Struct, frozen=True):
    """A worker's spot-check record: checks passed, failed (blamed), unresolved, and the last mismatches."""

    passed: int = 0
    failed: int = 0
    unresolved: int = 0
    evidence: list[SpotEvidence] = []


class ReputationSummary(msgspec.Struct, frozen=True):
    """One worker's standing, as /jsonstats shows it and as the on-chain reputation summary will publish it."""

    key: str
    name: str
    answered: int
    failed: int
    success: float
    ttft_ms: float | None
    tokens_per_s: float | None
    benched_s: float
    connected: bool
    misreports: int = 0
    spot_checks: SpotChecks = SpotChecks()


def _moving(old: float | None, sample: float) -> float:
    return sample if old is None else old + _LATENCY_ALPHA * (sample - old)


class ReputationBook:
    """Every worker key seen, connected or not; keys gone longer than `keep_s` are forgotten."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self._by_key: dict[str, Reputation] = {}
        self._gone: OrderedDict[str, float] = OrderedDict()  # disconnected keys, oldest first

    def attach(self, key: str, name: str, now: float) -> Reputation:
        self._forget_older_than(now - self.keep_s)
        rep = self._by_key.get(key)
        if rep is None:
            rep = self._by_key[key] = Reputation(key=key, name=name)
        rep.name = name
        rep.links += 1
        self._gone.pop(key, None)
        return rep

    def get(self, key: str) -> Reputation | None:
        return self._by_key.get(key)

    def detach(self, rep: Reputation, now: float) -> None:
        rep.links -= 1
        if rep.links == 0:
            self._gone[rep.key] = now

    def _forget_older_than(self, cutoff: float) -> None:
        while self._gone:
            key, gone_at = next(iter(self._gone.items()))
            if gone_at > cutoff:
                break
            del self._gone[key]
            del self._by_key[key]

    def save(self, path: Path) -> None:
        """Write what was learned, so that a restarted proxy routes as well as the one that stopped."""
        write_atomically(path, msgspec.json.encode(list(self._by_key.values())), SECRET_MODE)

    def load(self, path: Path, now: float) -> int:
        """Take back what a previous run saved (an unreadable file is ignored); returns the keys restored.

        Links and benches belong to the previous run's connections and clock, so they start empty; each key
        counts as disconnected from `now`, to be forgotten after `keep_s` unless its worker returns.
        """
        try:
            saved = msgspec.json.decode(path.read_bytes(), type=list[Reputation])
        except (OSError, msgspec.DecodeError):
            return 0
        for rep in saved:
            if rep.key not in self._by_key:
                rep.links, rep.benched_until, rep.failure_streak = 0, 0.0, 0
                self._by_key[rep.key] = rep
                self._gone[rep.key] = now
        return len(saved)

    def summaries(self, now: float) -> list[ReputationSummary]:
        """The hook for the on-chain reputation summary: what it will commit, already in wire form."""
        return [rep.summary(now) for rep in self._by_key.values()]
