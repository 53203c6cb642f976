"""Which proxies a client or worker dials: a list pinned in its config, or the proxies the root registry lists
(`discover_proxies`), ordered by measured latency.

The registry is re-read when its version moves (checked every `poll_s`; `Ledger.refresh` is cheap while nothing
changed), and the endpoints are then probed again (also every `PROBE_EVERY_S`, at every poll while one does not
answer, and after a link is lost): the time to open a TCP connection to each, which is what a
link's first round trip costs. Proxies whose latencies lie within `LATENCY_BUCKET_S` of each other count as equally
near; among them each node prefers its own order (a hash of its name and the endpoint), so the nodes of a network
spread over equal proxies instead of all taking the first one. An endpoint that does not answer the probe goes
last, still tried (it may come back). The dialers (`wire/dialer.py`) ask `addresses()` before every round, so a
change is followed without a restart, and fail over down this list.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence

from cocoon.config import ClientConfig, WorkerConfig
from cocoon.ledger.base import Ledger
from cocoon.ledger.network import open_ledger
from cocoon.wire.dialer import split_address

log = logging.getLogger(__name__)

LATENCY_BUCKET_S = 0.010
UNREACHABLE_S = float("inf")
PROBE_EVERY_S = 60.0  # latencies are measured again this often, and at every poll while a proxy did not answer


class ProxyDirectory:
    def __init__(self, name: str, pinned: Sequence[str], ledger: Ledger | None = None, *, poll_s: float = 5.0,
                 probe_timeout_s: float = 2.0) -> None:
        """`ledger`: read the registry's proxies from it (discovery); None: use `pinned` as it is, in its order."""
        for address in pinned:
            split_address(address)  # a malformed address is a configuration error: say so at start
        self.name = name
        self.pinned = list(pinned)
        self.ledger = ledger
        self.poll_s = poll_s
        self.probe_timeout_s = probe_timeout_s
        self.latency_s: dict[str, float] = {}
        self._ordered: list[str] = list(pinned)
        self._version: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._probes: set[asyncio.Task[None]] = set()
        self._probed_at = float("-inf")

    @property
    def discovering(self) -> bool:
        return self.ledger is not None

    def addresses(self) -> list[str]:
        """The proxies to dial, most preferred first."""
        return list(self._ordered)

    def read(self) -> bool:
        """Read the registry's proxy list if its version moved (blocking: it reads the chain); True if it did."""
        if self.ledger is None:
            return False
        version = self.ledger.refresh().version
        if version == self._version:
            return False
        endpoints = sorted({entry.endpoint for entry in self.ledger.proxies() if _valid(entry.endpoint)})
        self._version = version
        self._ordered = self._order(endpoints)
        log.info("proxies read from the root registry", extra={"fields": {"version": version, "proxies": endpoints}})
        return True

    async def refresh(self, *, probe: bool = False) -> None:
        """Re-read the registry (in a thread) and, when it changed or `probe` asks, measure every proxy again."""
        changed = await asyncio.to_thread(self.read)
        stale = time.monotonic() - self._probed_at > PROBE_EVERY_S
        unanswered = any(self.latency_s.get(a, UNREACHABLE_S) == UNREACHABLE_S for a in self._ordered)
        if changed or probe or stale or unanswered:
            await self.probe()

    async def probe(self) -> None:
        self._probed_at = time.monotonic()
        addresses = list(self._ordered)
        results = await asyncio.gather(*(self._measure(a) for a in addresses))
        self.latency_s.update(zip(addresses, results, strict=True))
        self._ordered = self._order(addresses)
        log.info("proxy latencies measured", extra={"fields": {"latency_ms": self.latency_ms(),
                                                               "order": self._ordered}})

    async def _measure(self, address: str) -> float:
        host, port = split_address(address)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            return UNREACHABLE_S
        elapsed = time.perf_counter() - started
        writer.transport.abort()  # nothing was said: a probe is not a peer
        return elapsed

    def _order(self, addresses: Sequence[str]) -> list[str]:
        if not self.discovering:
            return list(addresses)  # a pinned list is the operator's order

        def key(address: str) -> tuple[float, bytes]:
            latency = self.latency_s.get(address, UNREACHABLE_S)
            bucket = latency // LATENCY_BUCKET_S if latency != UNREACHABLE_S else UNREACHABLE_S
            return bucket, hashlib.sha256(f"{self.name}\0{address}".encode()).digest()

        return sorted(addresses, key=key)

    def start(self) -> None:
        if self.discovering:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        for task in [self._task, *self._probes]:
            if task is not None:
                task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
            except Exception as exc:  # a loop that must outlive a chain that is down: the next round retries
                log.warning("cannot re-read the proxies from the registry", extra={"fields": {"reason": str(exc)}})

    def latency_ms(self) -> dict[str, float | None]:
        """The last measured latency to each proxy (None: did not answer), as /jsonstats shows it."""
        return {a: (round(s * 1000, 2) if s != UNREACHABLE_S else None) for a, s in self.latency_s.items()}

    def on_link_lost(self) -> None:
        """A link broke: measure again soon (the proxy may be gone, or another nearer now)."""
        if self.discovering:
            task = asyncio.get_running_loop().create_task(self.probe())
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)


def proxy_directory(cfg: ClientConfig | WorkerConfig, ledger: Ledger | None) -> ProxyDirectory:
    """The directory of a client's or worker's config: the registry's proxies when it discovers them (through
    `ledger`, the node's own, or one opened for this), else the proxies it pins."""
    if not cfg.discover_proxies:
        return ProxyDirectory(cfg.name, cfg.proxy_addresses)
    return ProxyDirectory(cfg.name, [], ledger if ledger is not None else open_ledger(cfg),
                          poll_s=cfg.registry_sync_s)


def _valid(endpoint: str) -> bool:
    try:
        split_address(endpoint)
    except ValueError:
        log.warning("ignoring a registered proxy whose endpoint is not HOST:PORT", extra={"fields": {
            "endpoint": endpoint[:100]}})
        return False
    return True
