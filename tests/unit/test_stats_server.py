"""The stats port: loopback unless configured, a token when bound elsewhere, the dashboard's files, the series."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from cocoon.config import ConfigError
from cocoon.observe.series import Series, quantile
from cocoon.observe.stats import StatsServer


def server(token: str | None = None) -> StatsServer:
    return StatsServer("worker", "w-1", CollectorRegistry(), lambda: {"served": 3}, token=token)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7"])
async def test_a_stats_port_reachable_from_elsewhere_needs_a_token(host: str) -> None:
    with pytest.raises(ConfigError) as refused:
        await server().start(host, 0)
    assert "stats_token" in str(refused.value)


async def test_with_a_token_data_needs_it_and_the_page_does_not() -> None:
    stats = server(token="s3cret")
    port = await stats.start("127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/jsonstats", "/metrics"):
                async with http.get(base + path) as resp:
                    assert resp.status == 401
                async with http.get(base + path, headers={"Authorization": "Bearer wrong"}) as resp:
                    assert resp.status == 401
                async with http.get(base + path, headers={"Authorization": "Bearer s3cret"}) as resp:
                    assert resp.status == 200
            async with http.get(base + "/jsonstats", headers={"Authorization": "Bearer s3cret"}) as resp:
                body = await resp.json()
                assert body["served"] == 3 and body["role"] == "worker"
            # the page and its files hold no data: they load without the token, which the page reads from #token=
            for path, kind in (("/dashboard", "text/html"), ("/dashboard/app.js", "text/javascript"),
                               ("/dashboard/app.css", "text/css"), ("/healthz", "application/json")):
                async with http.get(base + path) as resp:
                    assert resp.status == 200 and resp.content_type == kind
            async with http.get(base + "/dashboard/secrets.txt") as resp:
                assert resp.status == 404
    finally:
        await stats.stop()


def test_series_buckets_counts_and_quantiles() -> None:
    now = [1000.0]
    series = Series(bucket_s=2.0, length=5, max_samples=4, clock=lambda: now[0])
    for v in (10.0, 20.0, 30.0, 40.0):
        series.sample("latency_ms", v)
    series.count("requests", 4)
    now[0] += 4.0
    series.count("requests")
    snap = series.snapshot()
    assert snap["t"] == [996.0, 998.0, 1000.0, 1002.0, 1004.0]
    assert snap["counts"]["requests"] == [0.0, 0.0, 4.0, 0.0, 1.0]
    assert snap["p50"]["latency_ms"] == [None, None, 20.0, None, None]
    assert snap["p99"]["latency_ms"][2] == 40.0
    assert series.recent("latency_ms") == {"n": 4, "p50": 20.0, "p99": 40.0}
    # bounded: past max_samples a bucket keeps a uniform choice, and still counts every one offered
    for v in range(1000):
        series.sample("latency_ms", float(v))
    assert series.recent("latency_ms", last_s=1.0)["n"] == 1000
    assert len(series._buckets[-1].samples["latency_ms"]) == 4
    now[0] += 100.0  # everything ages out of the window
    assert series.snapshot()["counts"]["requests"] == [0.0] * 5
    assert quantile([1.0, 2.0, 3.0], 0.5) == 2.0 and quantile([5.0], 0.99) == 5.0
