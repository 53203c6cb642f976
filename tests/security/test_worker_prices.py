"""Issue 15, item 3: worker prices were unbounded. A worker announcing `coefficient = 10**12` made every request
without a client price cap fail with 402 while it was linked (the proxy reserved each request's money at the
dearest linked worker's coefficient); moderate values were simply charged, clients having no cap by default; a
negative one left a ghost in the registry.

Real processes (`cocoon up`'s network, payments on): the root registry holds the highest coefficient allowed, the
proxy refuses workers above it (and any ≤ 0) at their hello, clients have a default cap, and the money is reserved
at the cap the client allows, so a dear worker never makes a request fail that a cheaper one can serve."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cocoon.config import Prices
from cocoon.ledger.pricing import price_request
from cocoon.localnet import LocalNet, free_port
from tests.integration.test_payments import wire_usage
from tests.netutil import BLOCK_S, chain_ledger, get_json


@pytest.fixture
def net_factory(tmp_path: Path) -> Iterator[Any]:
    nets: list[LocalNet] = []

    def make(**kwargs: Any) -> LocalNet:
        net = LocalNet(tmp_path / "state", workers=1, engine="fake", port=free_port(), max_active=4,
                       engine_options={"reply_tokens": 12}, block_interval_s=BLOCK_S, **kwargs)
        nets.append(net)
        return net

    yield make
    for net in nets:
        net.stop()


def chat(net: LocalNet, *, stream: bool) -> dict[str, Any]:
    """One chat request through the client's API; the answer's `usage` (with `cost_nanoton`)."""
    body: dict[str, Any] = {"model": "fake-model", "stream": stream,
                            "messages": [{"role": "user", "content": "what does this cost"}]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    req = urllib.request.Request(f"{net.client.api_url}/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
    if not stream:
        return json.loads(raw)["usage"]
    events = [json.loads(line[6:]) for line in raw.split(b"\n\n") if line.startswith(b"data: {")]
    return next(e["usage"] for e in events if e.get("usage"))


def test_item_3_workers_announcing_a_price_above_the_registry_maximum_or_not_positive_are_refused(
        net_factory: Any) -> None:
    net = net_factory()
    net.start(120)
    with contextlib.closing(chain_ledger(net.chain_info)) as ledger:
        assert ledger.root_params().prices.max_coefficient == 10_000
    bad = {"worker-huge": 10**12, "worker-negative": -5}
    for name, coefficient in bad.items():
        net.spawn(net.add_worker(name, coefficient=coefficient))
    proxy = next(n for n in net.nodes if n.role == "proxy")
    reasons = [f"price coefficient {c} is outside 1..10000" for c in bad.values()]
    deadline = time.monotonic() + 60
    while not all(r in proxy.log_path.read_text() for r in reasons):
        assert time.monotonic() < deadline, "the proxy did not refuse both workers within 60 s"
        time.sleep(0.2)
    stats = get_json(f"{proxy.stats_url}/jsonstats")
    assert [(w["name"], w["coefficient"]) for w in stats["workers"]] == [("worker-1", 1000)]
    assert stats["models"] == ["fake-model"]
    assert get_json(f"{net.client.api_url}/models")["data"][0]["workers"] == 1
    for name in bad:
        node = next(n for n in net.nodes if n.name == name)
        worker = get_json(f"{node.stats_url}/jsonstats")
        assert worker["proxy_connected"] is False
        assert "refused by peer: price coefficient" in (worker["last_link_error"] or "")
    # the honest worker still serves
    assert chat(net, stream=False)["completion_tokens"] == 12


def test_item_3_a_dear_worker_never_makes_a_request_fail_that_a_cheaper_one_can_serve(net_factory: Any) -> None:
    # Prices high enough that a reservation at ten times the list price (the registry's maximum, where the dear
    # worker sits) exceeds the client's 5 TON stake, while one at its default cap (twice the list price) fits.
    prices = Prices(price_per_token=100_000, worker_fee_per_token=80_000)
    net = net_factory(proxy_options={"prices": prices})
    dear = net.add_worker("worker-dear", coefficient=10_000)
    net.start(120)
    assert len(get_json(f"{net.nodes[0].stats_url}/jsonstats")["workers"]) == 2
    answers = [chat(net, stream=i % 2 == 0) for i in range(6)]
    # every request answered, each at the cheap worker's price: the dear one is above the client's default cap
    assert [u["cost_nanoton"] for u in answers] == \
        [price_request(wire_usage(u), prices, 1000).client_cost for u in answers]
    assert get_json(f"{dear.stats_url}/jsonstats")["served"] == 0
    client = get_json(f"{net.client.stats_url}/jsonstats")
    assert client["refused_vouchers"] == 0 and client["unexplained_nanoton"] == 0
