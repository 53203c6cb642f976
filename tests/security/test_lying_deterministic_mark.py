"""Issue 11 (spot checks of sealed requests): a client that lies in a sealed request's envelope.

The proxy cannot read a sealed body, so it spot-checks the sealed requests its client marked deterministic in the
envelope (`Request.deterministic`). An attacker's client (a real `cocoon client` marking every request so:
tests/security/lying_client.py) sends sampled requests (temperature 0.9) marked deterministic, hoping the proxy
re-runs them on other workers, whose answers differ as sampled answers do, and holds that against honest workers
(evidence, lost reputation, benching once two runs happen to agree against a third). The workers are real `cocoon
worker`s whose fake engine samples at a temperature above 0, as real engines do.

The worker that opens such a request checks the mark against the plaintext body and refuses it (400
`sealed_envelope_mismatch`): it is never run, never charged, never checked, and no worker has a mismatch on its
record. Before the check, the requests were answered and re-run, and every check of them ended as a mismatch kept
as evidence against the honest workers.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from cocoon.ledger.books import CHECKS
from tests.netutil import free_port, get_json
from tests.security.procs import config, get_or_none, role_process, wait_until
from tests.security.test_sealed_metering import ask as ask_events


def ask(api: str, i: int, *, stream: bool, temperature: float) -> tuple[int, dict[str, Any]]:
    """One chat request: its status and its answer (the last event of a stream)."""
    status, events = ask_events(api, stream=stream, temperature=temperature,
                                messages=[{"role": "user", "content": f"say something new, number {i}"}])
    return status, events[-1]


def test_a_request_marked_deterministic_whose_body_samples_is_refused_and_blames_nobody(tmp_path: Path) -> None:
    proxy_port, api_port, proxy_stats = free_port(), free_port(), free_port()
    proxy_cfg = config(tmp_path / "proxy.toml", name="proxy", state_dir=str(tmp_path), port=proxy_port,
                       stats_port=proxy_stats, spot_checks={"share": 1.0})
    workers = []
    for n in range(3):
        workers.append(config(tmp_path / f"worker-{n}.toml", name=f"worker-{n}", state_dir=str(tmp_path),
                              proxy=f"127.0.0.1:{proxy_port}", engine="fake", stats_port=free_port(),
                              engine_options={"reply_tokens": 8, "sample": True}))
    client_cfg = config(tmp_path / "client.toml", name="client", state_dir=str(tmp_path),
                        proxy=f"127.0.0.1:{proxy_port}", api_port=api_port, stats_port=free_port())
    liar = Path(__file__).with_name("lying_client.py")
    logs = [tmp_path / f"{name}.log" for name in ("proxy", "worker-0", "worker-1", "worker-2", "client")]
    with role_process("proxy", proxy_cfg, logs[0]) as proxy, \
            role_process("worker", workers[0], logs[1]) as w0, \
            role_process("worker", workers[1], logs[2]) as w1, \
            role_process("worker", workers[2], logs[3]) as w2, \
            role_process("client", client_cfg, logs[4], script=liar) as client:
        api = f"http://127.0.0.1:{api_port}/v1"
        procs = list(zip([proxy, w0, w1, w2, client], logs, strict=True))
        wait_until(lambda: any(m["workers"] == 3 for m in (get_or_none(api + "/models") or {"data": []})["data"]),
                   procs, "three workers")
        for i in range(4):
            status, answer = ask(api, i, stream=i % 2 == 1, temperature=0.9)
            assert status == 400, f"a sampled request marked deterministic was served: {answer}"
            assert answer["error"]["code"] == "sealed_envelope_mismatch", answer
        # a request that is what its mark says is served (and checked) as ever
        status, answer = ask(api, 9, stream=False, temperature=0)
        assert status == 200, answer

        def checks_over() -> dict[str, Any] | None:
            stats = get_json(f"http://127.0.0.1:{proxy_stats}/jsonstats")
            spot = stats["spot_checks"]
            done = spot["passed"] + spot["failed"] + spot["unresolved"] + spot["skipped"]
            return stats if done >= 1 and spot["in_flight"] == 0 else None

        time.sleep(0.5)  # a check of an answered lie would be under way by now
        stats = wait_until(checks_over, procs, "the spot checks")
        spot = stats["spot_checks"]
        assert spot["failed"] == spot["unresolved"] == 0, spot
        for rep in stats["reputation"]:  # no honest worker has a mismatch on its record
            assert rep["spot_checks"]["failed"] == rep["spot_checks"]["unresolved"] == 0, rep
            assert rep["spot_checks"]["evidence"] == [], rep
        assert "spot check mismatch" not in logs[0].read_text()
        # never charged: the proxy's books charge the client for the one honest answer only (its check's re-run is
        # the proxy's to pay)
        with sqlite3.connect(tmp_path / "proxy-books.sqlite") as db:
            assert db.execute("SELECT COUNT(*) FROM requests WHERE client != ?", (CHECKS,)).fetchone() == (1,)
        assert all(p.poll() is None for p, _ in procs)
