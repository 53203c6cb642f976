"""Issue 15, item 14: a peer presenting crafted TDX quotes, each naming a platform (FMSPC) never seen, made the
proxy fetch Intel collateral inside the TLS handshake, on its event loop: every handshake froze the whole proxy
for up to the fetch timeout (10 s), and the record of failed fetches grew without bound.

Here a real proxy process accepts TDX workers and fetches from a PCCS on 127.0.0.1 that never answers; the
attacker dials with a fresh FMSPC each time. Each handshake must be refused at once, the proxy must keep
serving its stats meanwhile, and its collateral bookkeeping must stay bounded."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from cocoon.attest.policy import DEV_POLICY
from cocoon.ratls import tls
from cocoon.ratls.cert import CertVerifier, make_identity
from tests.netutil import free_port, get_json
from tests.security.procs import proxy_config, role_process, wait_stats
from tests.tdxdata import SAMPLE_QUOTE, fake_pccs, quote_with_fmspc

DIALS = 12
# Generous: a refusal takes milliseconds; the flaw held each handshake for the 10 s fetch timeout.
REFUSED_WITHIN_S = 5.0


class CraftedQuotes:
    """An attacker's "TDX backend": whatever report_data, the same crafted quote."""

    kind = "tdx"

    def __init__(self, quote: bytes) -> None:
        self._quote = quote

    def quote(self, report_data: bytes) -> bytes:
        return self._quote


async def dial_and_wait_for_refusal(port: int, fmspc: str) -> float:
    backend = CraftedQuotes(quote_with_fmspc(SAMPLE_QUOTE.read_bytes(), fmspc))
    identity = make_identity("worker", backend)  # type: ignore[arg-type]
    started = time.monotonic()
    stream = await tls.connect("127.0.0.1", port, identity, CertVerifier(DEV_POLICY, {"proxy"}), timeout=30)
    try:
        # TLS 1.3: our handshake ends before the proxy judges our certificate; its refusal closes the link.
        assert await asyncio.wait_for(stream.read(), 30) == b""
    finally:
        await stream.close()
    return time.monotonic() - started


async def stats_latencies(port: int, stop: asyncio.Event) -> list[float]:
    """How long each /jsonstats of the proxy takes while the attack runs (the stats share its event loop)."""
    latencies = []
    while not stop.is_set():
        started = time.monotonic()
        await asyncio.to_thread(get_json, f"http://127.0.0.1:{port}/jsonstats", 30)
        latencies.append(time.monotonic() - started)
        await asyncio.sleep(0.05)
    return latencies


def test_crafted_platforms_neither_block_the_proxy_nor_grow_its_caches(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('name = "tdx-workers"\nproduction_safe = false\n'
                      '[roles.worker]\nkinds = ["tdx"]\n[roles.client]\nkinds = ["none"]\n')
    port, stats = free_port(), free_port()
    hold = threading.Event()  # the PCCS never answers while the attack runs
    with fake_pccs(hold=hold) as (pccs, _requests):
        config = proxy_config(tmp_path, port, stats, f'policy = "{policy}"\npccs_url = "{pccs}"\n')
        log = tmp_path / "proxy.log"
        with role_process("proxy", config, log) as proc:
            wait_stats(stats, proc, log)

            async def attack() -> tuple[list[float], list[float]]:
                stop = asyncio.Event()
                polling = asyncio.create_task(stats_latencies(stats, stop))
                durations = []
                try:
                    for i in range(DIALS):
                        durations.append(await dial_and_wait_for_refusal(port, f"{0xF00000000000 + i:012X}"))
                        assert durations[-1] < REFUSED_WITHIN_S, \
                            f"handshake {i} took {durations[-1]:.1f} s: the proxy waited on the PCCS"
                finally:
                    stop.set()
                    latencies = await polling
                return durations, latencies

            durations, latencies = asyncio.run(attack())
            assert len(durations) == DIALS
            assert latencies and max(latencies) < REFUSED_WITHIN_S
            collateral = get_json(f"http://127.0.0.1:{stats}/jsonstats")["collateral"]
            assert collateral["fetching"] <= 4 and collateral["cached"] == 0
            assert collateral["failed"] + collateral["fetching"] <= DIALS
            text = log.read_text()
            assert "being fetched" in text and "collateral fetches are already in progress" in text
