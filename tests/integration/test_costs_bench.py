"""bench/costs.py (issue 12) on a small scale: the probe it puts on the nodes' PYTHONPATH measures the steps it
names inside each running node (sealing at the client, opening at the workers, the books at the proxy), every
request is answered, and the figures add up per node. No timing is asserted: the figures are the bench's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "costs.py"


def test_the_costs_bench_measures_each_named_step_inside_the_nodes() -> None:
    run = subprocess.run([sys.executable, str(BENCH), "--requests", "40", "--concurrency", "4", "--json"],
                         capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert (report["requests"], report["errors"], report["sealed"]) == (40, 0, True)
    nodes = report["nodes"]
    client = next(v for k, v in nodes.items() if k.startswith("client"))
    proxy = next(v for k, v in nodes.items() if k.startswith("proxy"))
    workers = [v for k, v in nodes.items() if k.startswith("worker")]
    assert client["steps"]["seal_request"]["calls_per_request"] == 1.0
    assert proxy["steps"]["ProxyBooks.settle"]["calls_per_request"] == 1.0
    opened = sum(w["steps"]["open_sealed"]["calls_per_request"] for w in workers if "open_sealed" in w["steps"])
    assert opened == pytest.approx(1.0, abs=0.02)  # each worker's share, rounded to 0.01
    for node in nodes.values():
        steps = node["steps"].values()
        assert all(s["us_per_request"] > 0 for s in steps)
        assert sum(s["us_per_request"] for s in steps) <= node["cpu_us_per_request"] * 1.05
