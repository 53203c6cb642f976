"""The proxy's Prometheus metrics; per-worker reputation is read from the book at scrape time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cocoon.observe.series import Series
from cocoon.proxy.reputation import ReputationBook


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # the dashboards' recent history: requests and errors ended, latency and time to first byte (ms)
        self.series = Series()
        self.requests = _Noted(Counter("cocoon_proxy_requests", "Client requests by outcome", ["outcome"],
                                       registry=r), self._ended)
        self.retries = Counter("cocoon_proxy_retries", "Requests moved to another worker before their first token",
                               ["reason"], registry=r)
        self.tokens = Counter("cocoon_proxy_tokens", "Tokens metered", ["kind"], registry=r)
        self.active = Gauge("cocoon_proxy_active_requests", "Requests in flight", registry=r)
        self.waiting = Gauge("cocoon_proxy_waiting_requests", "Requests waiting for a free worker slot", registry=r)
        self.workers = Gauge("cocoon_proxy_workers", "Connected workers", registry=r)
        self.clients = Gauge("cocoon_proxy_clients", "Connected clients", registry=r)
        self.first_byte = _Timed(Histogram("cocoon_proxy_first_byte_seconds", "Time to the answer's first byte",
                                           registry=r), lambda s: self.series.sample("ttft_ms", s * 1000))
        self.charged = Counter("cocoon_proxy_charged_nanoton", "Charged to clients", registry=r)
        self.spot_checks = Counter("cocoon_proxy_spot_checks", "Spot checks of deterministic requests by verdict "
                                   "(passed, failed, unresolved, skipped)", ["verdict"], registry=r)
        self.spot_check_cost = Counter("cocoon_proxy_spot_check_cost_nanoton", "Worker fees the spot checks' "
                                       "re-executions are worth: the proxy's cost, never a client's", registry=r)
        self.media_seconds = Counter("cocoon_proxy_media_seconds", "Input media processed (media workload)",
                                     registry=r)
        self.beyond_bounds = Counter("cocoon_proxy_usage_beyond_bounds", "Token counts workers reported beyond what "
                                     "the request could produce (charged at the bound)", ["kind"], registry=r)

    def _ended(self, outcome: str) -> None:
        self.series.count("requests")
        if outcome != "ok":
            self.series.count("errors")

    def request_took(self, seconds: float) -> None:
        """A client request's time at the proxy, from arrival to its last message, whatever its outcome."""
        self.series.sample("latency_ms", seconds * 1000)

    def watch_reputation(self, book: ReputationBook, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry.register(_ReputationCollector(book, clock))


class _Noted:
    """A labelled counter that also tells `note` of every increment (the proxy's outcome counter)."""

    def __init__(self, counter: Counter, note: Callable[[str], None]) -> None:
        self._counter = counter
        self._note = note

    def labels(self, outcome: str) -> _NotedChild:
        return _NotedChild(self._counter.labels(outcome), lambda: self._note(outcome))


class _NotedChild:
    def __init__(self, child: Counter, note: Callable[[], None]) -> None:
        self._child = child
        self._note = note

    def inc(self, amount: float = 1) -> None:
        self._child.inc(amount)
        self._note()


class _Timed:
    """A histogram whose observations are also sampled into the dashboards' series."""

    def __init__(self, histogram: Histogram, sample: Callable[[float], None]) -> None:
        self._histogram = histogram
        self._sample = sample

    def observe(self, seconds: float) -> None:
        self._histogram.observe(seconds)
        self._sample(seconds)


class _ReputationCollector(Collector):
    def __init__(self, book: ReputationBook, clock: Callable[[], float]) -> None:
        self.book = book
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        labels = ["worker", "key"]
        answered = CounterMetricFamily("cocoon_proxy_worker_answered", "Answers a worker key completed", labels=labels)
        failed = CounterMetricFamily("cocoon_proxy_worker_failed", "Failures a worker key caused", labels=labels)
        success = GaugeMetricFamily("cocoon_proxy_worker_success_ratio", "Moving success rate", labels=labels)
        ttft = GaugeMetricFamily("cocoon_proxy_worker_ttft_seconds", "Moving time to first token", labels=labels)
        rate = GaugeMetricFamily("cocoon_proxy_worker_tokens_per_second", "Moving generation rate", labels=labels)
        benched = GaugeMetricFamily("cocoon_proxy_worker_benched_seconds", "Bench time left", labels=labels)
        misreports = CounterMetricFamily("cocoon_proxy_worker_misreports", "Answers whose usage a worker key reported "
                                         "beyond their bounds", labels=labels)
        for s in self.book.summaries(self.clock()):
            values = [s.name, s.key[:16]]
            answered.add_metric(values, s.answered)
            failed.add_metric(values, s.failed)
            success.add_metric(values, s.success)
            if s.ttft_ms is not None:
                ttft.add_metric(values, s.ttft_ms / 1000)
            if s.tokens_per_s is not None:
                rate.add_metric(values, s.tokens_per_s)
            benched.add_metric(values, s.benched_s)
            misreports.add_metric(values, s.misreports)
        yield from (answered, failed, success, ttft, rate, benched, misreports)
