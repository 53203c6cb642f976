"""`cocoon up`'s defaults that fit the machine: ports from a range, concurrency from the engine and cores."""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cocoon.localnet import PortRange, default_max_active
from tests.netutil import localnet


def _free_block(size: int) -> int:
    """The first port of `size` consecutive free ports below the kernel's ephemeral range: ports the network's own
    outgoing connections (to the chain's API, between its processes) never take as their source port between the
    moment a port is handed out and the moment its process binds it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for lo in range(20000, low - size, size):
        if all(_bindable(port) for port in range(lo, lo + size)):
            return lo
    pytest.skip(f"no {size} free consecutive ports below {low}")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_every_port_of_the_network_is_in_the_range(tmp_path: Path) -> None:
    lo = _free_block(41)
    hi = lo + 40
    with localnet(tmp_path / "state", workers=2, max_active=None, port_range=(lo, hi)) as net:
        urls = [net.info["api_url"], net.info["dashboard_url"], *(p["stats_url"] for p in net.info["processes"])]
        ports = [urlsplit(u).port for u in urls]
        proxy = tomllib.loads((net.state_dir / "proxy-1.toml").read_text())
        ports.append(proxy["port"])  # the RA-TLS listener workers and clients dial
        assert all(p is not None and lo <= p <= hi for p in ports), (ports, lo, hi)
        assert len(set(ports)) == len(ports) == 1 + 1 + 4 + 1
        # the network works on them, and the workers took the engine's default concurrency
        answer = net.sdk().chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=3)
        assert answer.choices[0].message.content
        assert {net.stats(w["name"])["max_active_requests"] for w in net.by_role("worker")} == {
            default_max_active("fake", os.cpu_count() or 1)}


def test_port_ranges() -> None:
    assert PortRange.parse(None).lo is None and 80 in PortRange.parse("")
    ports = PortRange.parse("30000-30002")
    assert (ports.lo, ports.hi) == (30000, 30002) and 30001 in ports and 30003 not in ports
    with pytest.raises(ValueError, match="outside"):
        ports.reserve(40000)
    for bad in ("30000", "a-b", "30002-30000", "80-90", "30000-70000"):
        with pytest.raises(ValueError):
            PortRange.parse(bad)


def test_default_concurrency_follows_the_engine() -> None:
    assert default_max_active("embedded", 16) == 2  # llama.cpp generates one answer at a time
    assert default_max_active("fake", 2) == 64
    assert default_max_active("openai:http://127.0.0.1:8000/v1", 4) == 32
