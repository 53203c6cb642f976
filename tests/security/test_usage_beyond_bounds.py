"""Issue 15, item 2: usage was believed blindly.

A worker of the genuine image configured with an `openai:` engine that reports `prompt_tokens: 50000000` charged
one request about 1 TON against a reservation of a few thousand nanoTON; negative `completion_tokens` lowered a
client's debt. Here two real workers front a real HTTP server on 127.0.0.1 that reports whatever usage the test
tells it to: negative counts are refused when the worker decodes them (the client gets an error, is charged
nothing); counts beyond what the request could produce are charged at its bounds (the prompt at the body's
length, the completion at its cap), and each such answer costs its worker reputation (benched at once), is
counted in the proxy's /jsonstats and logged."""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cocoon.config import Prices
from cocoon.core.usage import Usage
from cocoon.ledger.pricing import price_request
from tests.netutil import Net, localnet
from tests.security.wire import upstream

ABSURD_PROMPT = 50_000_000  # tokens: about 1 TON at the list price


def post(net: Net, usage: dict[str, Any], *, stream: bool) -> tuple[int, dict[str, Any]]:
    """A chat request whose engine will report `usage`; the HTTP status and the answer's usage (or error)."""
    body: dict[str, Any] = {"model": "upstream-model", "max_tokens": 5, "stream": stream,
                            "messages": [{"role": "user", "content": f"USAGE={json.dumps(usage)}"}]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    req = urllib.request.Request(net.api_url + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    if not stream:
        return 200, json.loads(raw)["usage"]
    events = [json.loads(line[6:]) for line in raw.split(b"\n\n") if line.startswith(b"data: {")]
    return 200, next(e["usage"] for e in events if e.get("usage"))


def books_rows(net: Net) -> list[tuple[int, int, int]]:
    with sqlite3.connect(net.node_dir("proxy-1") / "proxy-books.sqlite") as db:
        return db.execute("SELECT prompt_tokens, completion_tokens, client_cost FROM requests "
                          "ORDER BY seqno").fetchall()


def test_usage_beyond_the_bounds_is_charged_at_the_bounds_and_held_against_the_worker(tmp_path: Path) -> None:
    with upstream(tmp_path) as url, localnet(tmp_path / "state", engine=f"openai:{url}", workers=2) as net:
        prices = net.stats("proxy-1")["prices"]
        charged_before = net.stats("client-1")["charged_nanoton"]
        status, error = post(net, {"prompt_tokens": 10, "completion_tokens": -100_000_000}, stream=False)
        assert status >= 500 and error["error"]["message"]  # each worker refused it as it decoded it
        assert books_rows(net) == [] and net.stats("client-1")["charged_nanoton"] == charged_before

        status, whole = post(net, {"prompt_tokens": ABSURD_PROMPT, "completion_tokens": 5}, stream=False)
        assert status == 200
        status, streamed = post(net, {"prompt_tokens": 10, "completion_tokens": 1_000_000}, stream=True)
        assert status == 200
        (prompt_bound, completion, whole_cost), (prompt, completion_bound, streamed_cost) = books_rows(net)
        assert 0 < prompt_bound < 1000 and completion == 5  # the body's length, not 50,000,000
        assert (prompt, completion_bound) == (10, 5)  # the cap reserved for, not 1,000,000
        assert whole["cost_nanoton"] == whole_cost < 100_000  # nanoTON: the issue saw ~10**9
        assert streamed["cost_nanoton"] == streamed_cost
        for (p, c, cost) in books_rows(net):
            assert cost == price_request(Usage(prompt_tokens=p, completion_tokens=c),
                                         Prices(**prices), 1000).client_cost

        proxy = net.stats("proxy-1")
        assert proxy["books"]["usage_beyond_bounds"] == 2
        misreports = {r["name"]: (r["misreports"], r["benched_s"] > 0) for r in proxy["reputation"]}
        assert misreports == {"worker-1": (1, True), "worker-2": (1, True)}  # each answered one, each benched
        workers_log = "".join((net.state_dir / "logs" / f"worker-{i}.log").read_text() for i in (1, 2))
        assert "unreadable answer: Expected `int` >= 0 - at `$.usage.completion_tokens`" in workers_log
        log = (net.state_dir / "logs" / "proxy-1.log").read_text()
        lines = [json.loads(line) for line in log.splitlines() if "beyond what the request could produce" in line]
        assert [sorted(line["beyond"]) for line in lines] == [["prompt_tokens"], ["completion_tokens"]]
        assert all(line["request_id"] and line["reported"] for line in lines)
