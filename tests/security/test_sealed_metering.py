"""Issue 10, item 2: usage crosses the proxy signed by the worker over the sealed request and answer.

A worker reports more completion tokens than its engine counted (5 more, well within what the request could
produce, so the bounds of issue 15 item 2 do not catch it) after signing its receipt over the true count (a real
`cocoon worker` with its end changed: tests/security/greedy_worker.py). The proxy, which cannot read the sealed
answer, checks the worker's signature over the usage and over the sealed request and answer it relayed before it
settles: the greedy answer is never charged (a whole answer is refused, a stream ends as broken and is charged only
the tokens the proxy counted), and the worker is held to it (a misreport). Before, the proxy settled first and
charged the inflated usage."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.netutil import free_port, get_json
from tests.security.procs import config, get_or_none, role_process, wait_until


def ask(api: str, *, stream: bool, **fields: Any) -> tuple[int, list[dict[str, Any]]]:
    """One chat request (`fields` added to its body): its status, and its events (or its one JSON answer)."""
    body = {"model": "fake-model", "stream": stream, "max_tokens": 8,
            "messages": [{"role": "user", "content": "count me honestly"}], **fields}
    if stream:
        body["stream_options"] = {"include_usage": True}
    req = urllib.request.Request(api + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    if not stream or status != 200:
        return status, [json.loads(raw)]
    return status, [json.loads(line[6:]) for line in raw.split(b"\n\n") if line.startswith(b"data: {")]


def test_usage_the_worker_did_not_sign_over_the_sealed_answer_is_never_charged(tmp_path: Path) -> None:
    proxy_port, api_port, proxy_stats = free_port(), free_port(), free_port()
    # a misreport benches the worker at once: briefly here, so that the second request finds it again
    proxy_cfg = config(tmp_path / "proxy.toml", name="proxy", state_dir=str(tmp_path), port=proxy_port,
                       stats_port=proxy_stats, selection={"bench_s": 0.05, "bench_max_s": 0.1})
    worker_cfg = config(tmp_path / "worker.toml", name="greedy", state_dir=str(tmp_path),
                        proxy=f"127.0.0.1:{proxy_port}", engine="fake", engine_options={"reply_tokens": 6},
                        stats_port=free_port())
    client_cfg = config(tmp_path / "client.toml", name="client", state_dir=str(tmp_path),
                        proxy=f"127.0.0.1:{proxy_port}", api_port=api_port, stats_port=free_port())
    greedy = Path(__file__).with_name("greedy_worker.py")
    with role_process("proxy", proxy_cfg, tmp_path / "proxy.log") as proxy, \
            role_process("worker", worker_cfg, tmp_path / "worker.log", script=greedy) as worker, \
            role_process("client", client_cfg, tmp_path / "client.log") as client:
        api = f"http://127.0.0.1:{api_port}/v1"
        procs = [(proxy, tmp_path / "proxy.log"), (worker, tmp_path / "worker.log"),
                 (client, tmp_path / "client.log")]
        wait_until(lambda: any(m["workers"] for m in (get_or_none(api + "/models") or {"data": []})["data"]),
                   procs, "the greedy worker")
        status, (answer,) = ask(api, stream=False)
        assert status == 502, f"the inflated usage was charged: {answer}"
        assert "without a receipt over the sealed answer" in answer["error"]["message"]
        time.sleep(0.2)  # the bench is over
        status, events = ask(api, stream=True)
        assert status == 200 and events[-1]["error"]["code"] == "worker_failed", events[-1]
        assert "without a receipt over it" in events[-1]["error"]["message"]
        with sqlite3.connect(tmp_path / "proxy-books.sqlite") as db:
            charged = db.execute("SELECT completion_tokens FROM requests").fetchall()
        assert charged == [(6,)]  # only the stream, at the 6 tokens relayed, never the 11 claimed
        stats = get_json(f"http://127.0.0.1:{proxy_stats}/jsonstats")
        assert stats["receipts"]["refused"] >= 2
        assert all(p.poll() is None for p, _ in procs)
