"""Issue 11 (spot checks of sealed requests): a worker that signs a content digest other than what it served.

Spot checks of sealed requests compare what two workers signed their answers say (`Receipt.content_digest`), since
the proxy cannot read the answers. A worker (a real `cocoon worker` with its receipts changed:
tests/security/digest_lying_worker.py) signs, for every request marked deterministic, the digest of another answer
than the one its client gets, so that checks would compare an answer nobody received. The client, which opens the
answer, checks the digest against it: the receipt is refused (counted in its `/jsonstats` `receipts.refused`, logged,
and the answer goes to the app without a receipt, so with payments on its charge is not accepted), on whole and
streamed answers alike. An answer to an unmarked request carries no digest and is unaffected.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from tests.netutil import free_port, get_json, log_records
from tests.security.procs import config, get_or_none, role_process, wait_until


def ask(api: str, i: int, *, stream: bool, temperature: float) -> tuple[dict[str, str], dict[str, Any]]:
    """One chat request: the answer's headers and its usage object."""
    body: dict[str, Any] = {"model": "fake-model", "stream": stream, "max_tokens": 8, "temperature": temperature,
                            "messages": [{"role": "user", "content": f"question {i}"}]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    req = urllib.request.Request(api + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw, headers = resp.read(), dict(resp.headers)
    if not stream:
        return headers, json.loads(raw)["usage"]
    events = [json.loads(line[6:]) for line in raw.split(b"\n\n") if line.startswith(b"data: {")]
    return headers, next(e["usage"] for e in events if e.get("usage"))


def test_a_receipt_stating_another_answers_content_is_refused_by_the_client(tmp_path: Path) -> None:
    proxy_port, api_port, client_stats = free_port(), free_port(), free_port()
    proxy_cfg = config(tmp_path / "proxy.toml", name="proxy", state_dir=str(tmp_path), port=proxy_port,
                       stats_port=free_port())
    worker_cfg = config(tmp_path / "worker.toml", name="worker", state_dir=str(tmp_path),
                        proxy=f"127.0.0.1:{proxy_port}", engine="fake", engine_options={"reply_tokens": 6},
                        stats_port=free_port())
    client_cfg = config(tmp_path / "client.toml", name="client", state_dir=str(tmp_path),
                        proxy=f"127.0.0.1:{proxy_port}", api_port=api_port, stats_port=client_stats)
    liar = Path(__file__).with_name("digest_lying_worker.py")
    logs = [tmp_path / f"{name}.log" for name in ("proxy", "worker", "client")]
    with role_process("proxy", proxy_cfg, logs[0]) as proxy, \
            role_process("worker", worker_cfg, logs[1], script=liar) as worker, \
            role_process("client", client_cfg, logs[2]) as client:
        api = f"http://127.0.0.1:{api_port}/v1"
        procs = list(zip([proxy, worker, client], logs, strict=True))
        wait_until(lambda: any(m["workers"] for m in (get_or_none(api + "/models") or {"data": []})["data"]),
                   procs, "the worker")
        headers, usage = ask(api, 0, stream=False, temperature=0)
        assert "x-cocoon-receipt" not in {k.lower() for k in headers}, "the lying receipt was handed to the app"
        _, usage = ask(api, 1, stream=True, temperature=0)
        assert "receipt" not in usage
        receipts = get_json(f"http://127.0.0.1:{client_stats}/jsonstats")["receipts"]
        assert receipts["refused"] == 2 and receipts["held"] == 0, receipts
        refusals = [r for r in log_records(logs[2].read_text()) if r.get("msg") == "answer without a valid receipt"]
        assert len(refusals) == 2 and all("content_digest" in ln["reason"] for ln in refusals), refusals
        # an unmarked request states no digest: its receipt holds
        _, usage = ask(api, 2, stream=True, temperature=0.7)
        assert usage.get("receipt")
        assert get_json(f"http://127.0.0.1:{client_stats}/jsonstats")["receipts"]["held"] == 1
        assert all(p.poll() is None for p, _ in procs)
