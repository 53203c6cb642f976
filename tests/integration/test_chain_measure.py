"""Issue 9's two measurements, taken on every run of the suite through a real `cocoon up` on its devnet: the time
from a request's settlement to its claim being final on the chain, and the chain API calls per 1,000 requests (the
devnet counts every request its API serves, from every role). Printed, and written to
`chain-measurement.json` beside the network's state dir; the README records them."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from cocoon.bench import run_load
from tests.netutil import BLOCK_S, get_json, localnet

REQUESTS = 1000
POLL_S = 1.0  # the proxy's and client's chain rounds (claims are made in the proxy's)


def test_settlement_to_final_claim_and_chain_calls_per_thousand_requests(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # claims at every round (threshold 1 nanoTON), so each measures the chain's latency, not the batching's
    for name, value in {"CHAIN_POLL_S": str(POLL_S), "CLAIM_THRESHOLD_NANOTON": "1",
                        "COMMIT_INTERVAL_S": "10"}.items():
        monkeypatch.setenv(f"COCOON_{name}", value)
    with localnet(tmp_path / "state", engine="fake", workers=2, options=("reply_tokens=8",), max_active=16) as net:
        info = f"{net.chain['url']}/devnet/info"
        before, started = get_json(info)["result"]["api_calls"], time.monotonic()
        load = asyncio.run(run_load(net.api_url, "fake-model", REQUESTS, 16))
        assert (load.requests, load.errors) == (REQUESTS, 0)
        charged = net.stats("client-1")["vouchers_nanoton"]
        deadline = time.monotonic() + 60
        while net.stats("proxy-1")["settlement"]["claimed_nanoton"] != charged:
            assert time.monotonic() < deadline, "the proxy did not claim every charge within 60 s"
            time.sleep(0.2)
        after, elapsed = get_json(info)["result"], time.monotonic() - started
        times = net.stats("proxy-1")["settlement"]["settle_to_final_s"]
    calls = after["api_calls"] - before
    result = {"requests": REQUESTS, "seconds": round(elapsed, 1), "block_interval_s": BLOCK_S,
              "chain_poll_s": POLL_S, "api_calls": calls, "api_calls_per_1000_requests": round(calls * 1000 / REQUESTS),
              "api_calls_per_s": round(calls / elapsed, 1), "settle_to_final_s": times,
              "api_calls_by_method": after["api_calls_by_method"]}
    (tmp_path / "chain-measurement.json").write_text(json.dumps(result, indent=2))
    with capsys.disabled():
        print(f"\nchain measurement: {json.dumps(result)}")
    assert times["requests"] == REQUESTS and times["claims"] >= 1
    # a claim is final a few blocks after it is sent, and it is sent within a round of the settlement
    assert 0 < times["min_s"] <= times["mean_s"] <= times["max_s"] < 60
    # the request path never reaches the chain: far fewer calls than requests
    assert calls < REQUESTS
