"""Admission of unauthenticated connections on an RA-TLS listener, per source address.

A TCP connection costs its sender nothing, while the listener holds a socket, an OpenSSL object and a task for it
until the handshake ends: without bounds, half-open connections from one host exhaust the listener's file
descriptors and nobody else gets in. Bounds here:

- handshakes in progress, per source address and in total. When either is full, the oldest unfinished
  handshake (of that address; in total, of the address holding the most) is dropped to make room: an honest
  handshake ends within milliseconds, so the oldest one is the likeliest to be stalled, and a host flooding the
  listener only ever evicts its own connections as long as it holds more than anyone else.
- established links per source address: beyond it a new connection is refused before its handshake (a link is
  authenticated, so it is never evicted for a newcomer).
- a handshake that does not finish within the timeout is dropped (in `tls.serve`).

IPv6 sources are grouped by /64, the block one host is usually given. Every refusal is counted (`stats()`) and
logged, at most once per `LOG_EVERY_S` per kind so that a flood cannot flood the log too.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from cocoon.config import AdmissionConfig

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0


def source_key(peername: object) -> str:
    """The address limits are counted against: the IP, or its /64 for IPv6 (an IPv4-mapped one as IPv4)."""
    host = peername[0] if isinstance(peername, tuple) and peername else str(peername)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return str(host)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Pending:
    """One handshake in progress; `drop` aborts its connection (the handshake then fails by itself)."""

    __slots__ = ("address", "drop", "evicted")

    def __init__(self, address: str, drop: Callable[[], None]) -> None:
        self.address = address
        self.drop = drop
        self.evicted = False


class Admission:
    def __init__(self, limits: AdmissionConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._pending: dict[str, OrderedDict[Pending, None]] = {}  # per address, oldest first
        self._pending_total = 0
        self._links: dict[str, int] = {}
        self.refused = {"links_per_address": 0, "handshakes_per_address": 0, "handshakes_total": 0,
                        "handshake_timeout": 0}
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    # -- handshakes ----------------------------------------------------------------------------------------
    def begin(self, address: str, drop: Callable[[], None]) -> Pending | None:
        """A connection arrived: its handshake may start (evicting older ones to make room), or None when the
        address already holds its share of links."""
        if self._links.get(address, 0) >= self.limits.max_links_per_address:
            self._refuse("links_per_address", address)
            return None
        mine = self._pending.get(address)
        if mine is not None and len(mine) >= self.limits.max_handshakes_per_address:
            self._evict(address, "handshakes_per_address")
        if self._pending_total >= self.limits.max_handshakes:
            self._evict(max(self._pending, key=lambda a: len(self._pending[a])), "handshakes_total")
        entry = Pending(address, drop)
        self._pending.setdefault(address, OrderedDict())[entry] = None
        self._pending_total += 1
        return entry

    def end(self, entry: Pending, *, established: bool) -> None:
        """The handshake is over (the link established, or the connection dropped)."""
        self._forget(entry)
        if established:
            self._links[entry.address] = self._links.get(entry.address, 0) + 1

    def timed_out(self, entry: Pending) -> None:
        self._refuse("handshake_timeout", entry.address)

    def link_closed(self, address: str) -> None:
        left = self._links.get(address, 0) - 1
        if left > 0:
            self._links[address] = left
        else:
            self._links.pop(address, None)

    def _evict(self, address: str, kind: str) -> None:
        oldest = next(iter(self._pending[address]))
        self._forget(oldest)
        oldest.evicted = True
        self._refuse(kind, address)
        oldest.drop()

    def _forget(self, entry: Pending) -> None:
        mine = self._pending.get(entry.address)
        if mine is None or entry not in mine:
            return
        del mine[entry]
        self._pending_total -= 1
        if not mine:
            del self._pending[entry.address]

    # -- reporting -----------------------------------------------------------------------------------------
    def _refuse(self, kind: str, address: str) -> None:
        self.refused[kind] += 1
        now = self._clock()
        if now - self._logged_at.get(kind, -LOG_EVERY_S) < LOG_EVERY_S:
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
            return
        self._logged_at[kind] = now
        log.warning("connection refused before authentication", extra={"fields": {
            "reason": kind, "address": address, "not_logged_before": self._unlogged.pop(kind, 0)}})

    def stats(self) -> dict[str, object]:
        return {"handshakes_in_progress": self._pending_total, "links": sum(self._links.values()),
                "addresses": len(self._pending.keys() | self._links.keys()), "refused": dict(self.refused),
                "limits": msgspec.to_builtins(self.limits)}
