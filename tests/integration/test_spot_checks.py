"""Spot checks through real processes (issue 11 item 4): `cocoon up`'s network (proxy, fake-engine workers, a client,
payments on), every deterministic request re-run on another worker of the same model and image.

Honest deterministic workers never mismatch, over many requests; a worker answering with another model under the
same name (here a fake engine configured to answer shorter) is blamed by the referee, benched, and gets no more
traffic. The checks are the proxy's cost: the client is charged for its own requests only, and the checking workers
are paid through the books and their payout vouchers like for any answer.

Each runs twice: with the client sending its bodies in the clear (`seal_requests = false`), where the proxy reads
the answers it compares, and sealed (every client's default), where the proxy reads neither request nor answer: the
client marks the request deterministic in the seal's envelope, each worker signs its answer's content digest in its
receipt (which the client checks against what it opened), and the re-run goes, unchanged, to another worker the
request was sealed to."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cocoon.config import SpotCheckConfig
from cocoon.ledger.receipts import Receipt
from cocoon.ledger.translog import HeadStore, RegistryLog
from cocoon.localnet import LocalNet, free_port
from tests.netutil import BLOCK_S, chain_ledger, get_json


@pytest.fixture
def net_factory(tmp_path: Path) -> Iterator[Any]:
    nets: list[LocalNet] = []

    def make(workers: int, engine: str = "fake", *, sealed: bool = False) -> LocalNet:
        net = LocalNet(tmp_path / "state", workers=workers, engine=engine, port=free_port(), max_active=4,
                       engine_options={"reply_tokens": 12} if engine == "fake" else {},
                       proxy_options={"spot_checks": SpotCheckConfig(share=1.0, bench_after=2)},
                       client_options={"seal_requests": sealed}, block_interval_s=BLOCK_S)
        nets.append(net)
        return net

    yield make
    for net in nets:
        net.stop()


def chat(net: LocalNet, i: int, *, stream: bool, model: str = "fake-model", max_tokens: int | None = None) -> int:
    """One deterministic chat request (temperature 0, its own prompt); what the client was charged for it."""
    body: dict[str, Any] = {"model": model, "stream": stream, "temperature": 0,
                            "messages": [{"role": "user", "content": f"question number {i} about spot checks"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        body["stream_options"] = {"include_usage": True}
    req = urllib.request.Request(f"{net.client.api_url}/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        raw = resp.read()
    if not stream:
        return int(json.loads(raw)["usage"]["cost_nanoton"])
    events = [json.loads(line[6:]) for line in raw.split(b"\n\n") if line.startswith(b"data: {")]
    return int(next(e["usage"] for e in events if e.get("usage"))["cost_nanoton"])


def proxy_stats(net: LocalNet) -> dict[str, Any]:
    proxy = next(n for n in net.nodes if n.role == "proxy")
    return get_json(f"{proxy.stats_url}/jsonstats")


def settled(net: LocalNet, sampled: int, timeout_s: float = 60) -> dict[str, Any]:
    """The proxy's stats once the checks of `sampled` requests are all over."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = proxy_stats(net)
        spot = stats["spot_checks"]
        if spot["sampled"] >= sampled and spot["in_flight"] == 0 and \
                spot["passed"] + spot["failed"] + spot["unresolved"] + spot["skipped"] >= sampled:
            return stats
        assert time.monotonic() < deadline, f"spot checks did not finish within {timeout_s} s: {spot}"
        time.sleep(0.2)


def client_stats(net: LocalNet) -> dict[str, Any]:
    client = next(n for n in net.nodes if n.role == "client")
    return get_json(f"{client.stats_url}/jsonstats")


def never_replayed(net: LocalNet) -> None:
    """No worker was sent a request it had opened before: a sealed re-run goes to another worker, never back."""
    for node in net.nodes:
        if node.role == "worker":
            assert "sealed_request_replayed" not in node.log_path.read_text(), node.name


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
def test_honest_deterministic_workers_never_mismatch(net_factory: Any, sealed: bool) -> None:
    net = net_factory(2, sealed=sealed)
    net.start(120)
    requests = 60
    costs = [chat(net, i, stream=i % 2 == 0) for i in range(requests)]
    stats = settled(net, requests)
    spot = stats["spot_checks"]
    assert spot["deterministic_requests"] == spot["sampled"] == requests
    assert spot["failed"] == 0 and spot["unresolved"] == 0
    assert spot["passed"] >= requests * 3 // 4, spot  # a check finding the other worker busy is skipped, not run
    assert spot["cost_nanoton"] > 0 and spot["runs"] == spot["passed"]
    for rep in stats["reputation"]:
        assert rep["spot_checks"]["failed"] == 0 and rep["spot_checks"]["evidence"] == []
        assert rep["spot_checks"]["passed"] > 0
    # the re-executions are the proxy's cost: the client paid for its 60 requests, exactly what it was told
    (client,) = stats["books"]["clients"].values()
    assert client["requests"] == requests
    assert client["charged_nanoton"] == sum(costs)
    # the checking workers are paid, as the proxy's cost: the books record it apart, and every payout voucher (checks
    # included) reaches its worker, so what the workers hold is what the books paid
    books = stats["books"]
    assert books["checks_nanoton"] == spot["cost_nanoton"] > 0
    assert books["commission_nanoton"] == books["charged_nanoton"] - books["paid_nanoton"]
    workers = [n for n in net.nodes if n.role == "worker"]
    deadline = time.monotonic() + 30
    while sum(get_json(f"{w.stats_url}/jsonstats")["earned_nanoton"] for w in workers) != books["paid_nanoton"]:
        assert time.monotonic() < deadline, "the workers' payout vouchers do not add up to what the books paid"
        time.sleep(0.2)
    # every answer's receipt held at the client: sealed, with the content digest it checked against what it opened
    assert client_stats(net)["receipts"] == {"held": requests, "missing": 0, "refused": 0}
    never_replayed(net)
    # the client and the workers checked their proxy's registration against the registry's log, and kept its head
    chain = chain_ledger(net.chain_info)
    log = RegistryLog.read(chain)
    chain.close()
    for name in ("client-1", "worker-1", "worker-2"):
        assert HeadStore(net.state_dir / name / f"{name}.registry-head.json").load() == log.head


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
def test_honest_workers_running_the_real_model_agree_at_temperature_zero(net_factory: Any, sealed: bool) -> None:
    """The embedded engine (llama.cpp, greedy at temperature 0, no prompt cache reuse) answers alike on two workers,
    whole or streamed: a check of an honest worker never fails for want of determinism."""
    net = net_factory(2, engine="embedded", sealed=sealed)
    net.start(180)
    requests = 8
    for i in range(requests):
        chat(net, i, stream=i % 2 == 0, model="SmolLM2-135M-Instruct", max_tokens=12)
    spot = settled(net, requests, timeout_s=180)["spot_checks"]
    assert spot["failed"] == spot["unresolved"] == 0
    assert spot["passed"] >= requests // 2, spot


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
def test_a_worker_serving_another_model_under_the_same_name_is_caught_and_gets_no_more_traffic(
        net_factory: Any, sealed: bool) -> None:
    net = net_factory(2, sealed=sealed)
    net.add_worker("worker-liar", engine_options={"reply_tokens": 5})
    net.start(120)
    liar_key = None
    sent = 0
    deadline = time.monotonic() + 120
    while liar_key is None:  # until the liar is benched
        assert time.monotonic() < deadline and sent < 200, f"the liar was not caught after {sent} requests"
        chat(net, sent, stream=sent % 2 == 1)
        sent += 1
        stats = settled(net, sent)
        liar = next(w for w in stats["workers"] if w["name"] == "worker-liar")
        if liar["benched"]:
            liar_key = next(r["key"] for r in stats["reputation"] if r["name"] == "worker-liar")
    print(f"the liar was benched after {sent} requests ({'sealed' if sealed else 'plain'})")
    reputation = {r["name"]: r for r in stats["reputation"]}
    caught = reputation["worker-liar"]["spot_checks"]
    assert caught["failed"] >= 2
    assert all(e["blamed"] == liar_key and e["verdict"] == "failed" for e in caught["evidence"])
    evidence = caught["evidence"][-1]
    digests = {run["name"]: run["digest"] for run in evidence["runs"]}
    assert len(digests) == 3 and len(set(digests.values())) == 2  # two honest runs agree against the liar's
    assert digests["worker-liar"] not in {d for n, d in digests.items() if n != "worker-liar"}
    for run in evidence["runs"]:  # each run stands on its worker's own signed receipt
        receipt = Receipt.from_base64(run["receipt"])
        receipt.verify_worker()
        assert receipt.worker_key.hex() == run["worker"]
        if sealed:  # what the proxy compared is what each worker signed; one request, run as it came
            assert receipt.content_digest.hex() == run["digest"]
            assert receipt.request_id == evidence["request_id"] and receipt.sealed_request_hash
    for name in ("worker-1", "worker-2"):
        assert reputation[name]["spot_checks"]["failed"] == 0
        assert reputation[name]["spot_checks"]["passed"] > 0
    answered = reputation["worker-liar"]["answered"]
    for i in range(sent, sent + 20):
        chat(net, i, stream=False)
    stats = settled(net, sent + 20)
    reputation = {r["name"]: r for r in stats["reputation"]}
    assert reputation["worker-liar"]["answered"] == answered  # benched: no client request reached it
    assert reputation["worker-liar"]["benched_s"] > 3000
    assert stats["spot_checks"]["failed"] >= 2
    proxy = next(n for n in net.nodes if n.role == "proxy")
    assert "spot check mismatch" in proxy.log_path.read_text()
    with urllib.request.urlopen(f"{proxy.stats_url}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    label = 'cocoon_proxy_spot_checks_total{verdict="failed"}'
    failed = next(line for line in metrics.splitlines() if line.startswith(label))
    assert float(failed.split()[-1]) == stats["spot_checks"]["failed"]
    assert "cocoon_proxy_spot_check_cost_nanoton_total" in metrics
    never_replayed(net)
    # the liar's receipts held at the client: it signed what it served (another model's answer), so the client has
    # nothing to refuse; the checks caught it
    assert client_stats(net)["receipts"]["refused"] == 0
