"""What each step of a request costs inside the running nodes: the CPU of the thread running it, per request.

    .venv/bin/python bench/costs.py [--requests 3000] [--concurrency 32] [--plain] [--json]

The same local network as `cocoon bench` (a `fake` engine answering 50 chunks of 128 bytes, a client, a proxy,
two workers, the devnet): every node starts with `bench/costs_probe` on its PYTHONPATH, whose `sitecustomize`
wraps the functions listed in `bench/costs_probe/costs_targets.py` (sealing, receipts, vouchers, the books, frames,
TLS records, log lines) to add up the CPU of their thread while they run. After a warm-up, `--requests` streamed
requests at `--concurrency` go through the client's API (sealed unless `--plain`); the report gives, per process,
its CPU per request over that phase and each function's CPU per request and per call, measured where it runs
(caches shared with everything else on the machine), which a microbenchmark of the same function alone does not
show: on the 2-core machine of the README, steps cost 1.5 to 2.5 times what they cost alone.

The wrappers cost about a microsecond a call themselves (two clock reads): the per-process totals include that.
Progress goes to stderr, the report to stdout; every process started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cocoon.bench import CHUNK_BYTES, CHUNKS, _wait_http, run_load
from cocoon.localnet import LocalNet, free_port

PROBE = Path(__file__).resolve().parent / "costs_probe"


def snapshots(out_dir: Path) -> dict[int, dict[str, Any]]:
    found = {}
    for path in out_dir.glob("*.json"):
        try:
            found[int(path.stem)] = json.loads(path.read_text())
        except (ValueError, OSError):
            continue  # being replaced: the next second's is read instead
    return found


def settle(out_dir: Path, pids: set[int], timeout_s: float = 10.0) -> dict[int, dict[str, Any]]:
    """The snapshots of every node in `pids`, once each was written after now."""
    since = time.time()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = snapshots(out_dir)
        fresh = {pid for pid in pids if (out_dir / f"{pid}.json").exists()
                 and (out_dir / f"{pid}.json").stat().st_mtime > since}
        if fresh == pids:
            return found
        time.sleep(0.2)
    raise RuntimeError(f"no fresh probe snapshot from {sorted(pids - set(found))} within {timeout_s:.0f}s")


def report(before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]], names: dict[int, str],
           requests: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pid, name in sorted(names.items(), key=lambda item: item[1]):
        first, last = before[pid], after[pid]
        steps = {}
        for label, (seconds, calls) in last["sums"].items():
            s0, c0 = first["sums"].get(label, (0.0, 0))
            if calls - c0:
                steps[label] = {"us_per_request": round((seconds - s0) * 1e6 / requests, 1),
                                "calls_per_request": round((calls - c0) / requests, 2),
                                "us_per_call": round((seconds - s0) * 1e6 / (calls - c0), 1)}
        out[name] = {"cpu_us_per_request": round((last["cpu_s"] - first["cpu_s"]) * 1e6 / requests),
                     "steps": dict(sorted(steps.items(), key=lambda kv: -kv[1]["us_per_request"]))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--plain", action="store_true", help="a client configured plain (not sealing)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cocoon-costs-") as tmp:
        out_dir = Path(tmp) / "probe"
        out_dir.mkdir()
        os.environ["COCOON_COSTS_DIR"] = str(out_dir)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROBE), os.environ.get("PYTHONPATH")]))
        port = free_port()
        engine = subprocess.Popen(
            [sys.executable, "-m", "cocoon", "engine", "fake", "--port", str(port), "-o", f"reply_tokens={CHUNKS}",
             "-o", f"token_bytes={CHUNK_BYTES}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        net: LocalNet | None = None
        try:
            url = f"http://127.0.0.1:{port}/v1"
            _wait_http(url + "/models", 30)
            net = LocalNet(Path(tmp) / "state", workers=2, engine=f"openai:{url}", port=free_port(),
                           engine_options={}, max_active=args.concurrency)
            plain = net.add_client("client-plain", free_port(), seal_requests=False) if args.plain else None
            net.start(timeout_s=60)
            client = plain or net.client
            api = client.api_url or ""
            names = {n.proc.pid: n.name for n in net.nodes if n.proc and (n.role != "client" or n is client)}
            print(f"warming up through {api}", file=sys.stderr)
            asyncio.run(run_load(api, "fake-model", max(args.concurrency, args.requests // 20), args.concurrency))
            before = settle(out_dir, set(names))
            print(f"{args.requests} requests at concurrency {args.concurrency}", file=sys.stderr)
            load = asyncio.run(run_load(api, "fake-model", args.requests, args.concurrency))
            after = settle(out_dir, set(names))
        finally:
            if net is not None:
                net.stop()
            engine.terminate()
            engine.wait(10)
    result = {"requests": load.requests, "errors": load.errors, "rps": round(load.rps, 1),
              "sealed": not args.plain, "nodes": report(before, after, names, load.requests)}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['requests']} requests, {result['rps']} req/s, {'plain' if args.plain else 'sealed'}; CPU µs per "
          "request, in place")
    for name, node in result["nodes"].items():
        print(f"{name}: {node['cpu_us_per_request']} µs per request in all")
        for label, step in node["steps"].items():
            print(f"  {step['us_per_request']:7.1f}  {label} ({step['calls_per_request']} calls, "
                  f"{step['us_per_call']} µs each)")


if __name__ == "__main__":
    main()
