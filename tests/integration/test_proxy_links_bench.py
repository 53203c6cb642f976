"""bench/proxy_links.py (issue 12, goal 4) on a small scale: a real proxy admits every simulated worker's attested
link, every request sent through a real client is answered by one of them, and every process it started stops,
also when it is told to stop halfway. No timing is asserted: the figures are the bench's to report."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.netutil import pid_alive

BENCH = Path(__file__).resolve().parents[2] / "bench" / "proxy_links.py"


def test_the_links_bench_admits_every_link_and_answers_every_request() -> None:
    run = subprocess.run([sys.executable, str(BENCH), "--links", "20", "--requests", "20", "--idle-s", "1",
                          "--json"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["sealed"] is True and report["admission"]["max_links_per_address"] >= 20
    steps = report["steps"]
    assert [s["links"] for s in steps] == [0, 10, 20]
    for step in steps:
        assert step["admitted"] == step["connected"] == step["links"]
        assert step["rss_mb"] > 0 and step["proxy_idle_cpu_ms_per_s"] >= 0
    for step in steps[1:]:
        requests = step["requests"]
        assert (requests["answered"], requests["errors"]) == (20, 0)
        assert requests["proxy_cpu_ms_per_request"] is not None and step["rss_after_requests_mb"] > 0
    assert report["links_failed"] == 0 and report["links_connected_at_end"] == 20
    assert report["served_by_workers"] == 40  # the simulated workers answered them all, through the proxy
    assert not any(pid_alive(pid) for pid in report["pids"].values())


def test_the_links_bench_stopped_halfway_stops_the_proxy_and_client_it_started() -> None:
    bench = subprocess.Popen([sys.executable, str(BENCH), "--links", "10", "--idle-s", "30"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    pids: list[int] = []
    try:
        assert bench.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # bounded: one line per step, a handful in all
            line = bench.stderr.readline()
            if not line:
                break
            if found := re.search(r"proxy pid (\d+), client pid (\d+)", line):
                pids = [int(found[1]), int(found[2])]
            if "idle for" in line:
                break
        assert pids and all(pid_alive(pid) for pid in pids)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(60) == 130
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert not any(pid_alive(pid) for pid in pids)


def test_the_links_bench_has_help() -> None:
    run = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "--links" in run.stdout and "--requests" in run.stdout
