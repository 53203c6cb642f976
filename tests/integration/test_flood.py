"""Two client processes (two keys) on one proxy: one floods, one behaves. Only the flooder is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cocoon.bench import flood, run_load
from cocoon.localnet import LocalNet, free_port
from tests.netutil import BLOCK_S


async def test_a_flooding_client_gets_429_while_the_normal_one_is_always_served(tmp_path: Path) -> None:
    net = LocalNet(tmp_path / "state", workers=2, engine="fake", port=free_port(), max_active=8,
                   engine_options={"reply_tokens": 10, "tokens_per_s": 200},
                   proxy_options={"client_max_concurrent": 4}, block_interval_s=BLOCK_S)
    flooder = net.add_client("flooder", free_port())
    try:
        await asyncio.to_thread(net.start, 60)
        stop = asyncio.Event()
        flooding = asyncio.create_task(flood(flooder.api_url or "", "fake-model", 24, stop))
        await asyncio.sleep(0.5)
        normal = await run_load(net.client.api_url or "", "fake-model", requests=40, concurrency=2)
        stop.set()
        seen = await flooding
    finally:
        await asyncio.to_thread(net.stop)
    assert normal.errors == 0 and normal.requests == 40
    assert seen.get("429 concurrency_limit_exceeded", 0) > 0 and seen.get("200", 0) > 0
    assert set(seen) <= {"200", "429 concurrency_limit_exceeded"}
