"""A normal client's latency alone and next to a flooding client, on one proxy, as a ratio.

Real processes on this machine: one proxy, two workers on the `fake` engine (paced, so answers take time),
and two clients (two keys). The flooder sends on many lanes and never waits for Retry-After; the proxy
limits each client's requests in flight. Everything shares this machine's cores, so the flooder's CPU use
shows in the ratio too.

    .venv/bin/python bench/flood.py [--requests 300] [--flood-lanes 64]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from cocoon.bench import LoadResult, flood, run_load
from cocoon.localnet import LocalNet, free_port

MODEL = "fake-model"
LIMIT = 8  # requests in flight per client
NORMAL_LANES = 4


async def measure(normal_url: str, flooder_url: str, requests: int, lanes: int) -> tuple[LoadResult, LoadResult,
                                                                                         dict[str, int]]:
    await run_load(normal_url, MODEL, 50, NORMAL_LANES)  # warm up links and estimates
    alone = await run_load(normal_url, MODEL, requests, NORMAL_LANES)
    stop = asyncio.Event()
    flooding = asyncio.create_task(flood(flooder_url, MODEL, lanes, stop))
    await asyncio.sleep(1.0)
    crowded = await run_load(normal_url, MODEL, requests, NORMAL_LANES)
    stop.set()
    return alone, crowded, await flooding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--flood-lanes", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cocoon-flood-") as state:
        net = LocalNet(Path(state), workers=2, engine="fake", port=free_port(), max_active=16,
                       engine_options={"reply_tokens": 20, "tokens_per_s": 400},
                       proxy_options={"client_max_concurrent": LIMIT})
        flooder = net.add_client("flooder", free_port())
        try:
            net.start(timeout_s=60)
            alone, crowded, seen = asyncio.run(measure(net.client.api_url or "", flooder.api_url or "",
                                                       args.requests, args.flood_lanes))
        finally:
            net.stop()
    print(f"normal client: {args.requests} streamed requests on {NORMAL_LANES} lanes; flooder: "
          f"{args.flood_lanes} lanes; limit {LIMIT} requests in flight per client; 2 workers × 16 slots")
    print(f"{'':<14} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, r in (("alone", alone), ("with flood", crowded)):
        print(f"{name:<14} {r.pct(r.latencies_ms, 0.5):>8.1f} {r.pct(r.latencies_ms, 0.99):>8.1f} {r.errors:>7}")
    print("flooder's answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(seen.items())))
    p50 = crowded.pct(crowded.latencies_ms, 0.5) / alone.pct(alone.latencies_ms, 0.5)
    p99 = crowded.pct(crowded.latencies_ms, 0.99) / alone.pct(alone.latencies_ms, 0.99)
    print(f"ratio with flood / alone: p50 ×{p50:.2f}, p99 ×{p99:.2f}")


if __name__ == "__main__":
    main()
