"""Discovery (discovery.py): the proxies a client or worker dials come from its config or from the root registry,
nearest first, re-read when the registry changes; equally near proxies are spread over the nodes."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from cocoon.config import ClientConfig, WorkerConfig
from cocoon.discovery import LATENCY_BUCKET_S, ProxyDirectory, proxy_directory
from cocoon.ledger.local import LocalLedger
from cocoon.ledger.wallet import Wallet


def register(ledger: LocalLedger, endpoint: str) -> None:
    ledger.register_proxy(Wallet(os.urandom(32)).address, Wallet(os.urandom(32)).public_key, endpoint)


def test_a_pinned_list_is_kept_in_the_operators_order(tmp_path: Path) -> None:
    cfg = ClientConfig(name="c", state_dir=str(tmp_path), proxy="10.0.0.2:1", proxies=["10.0.0.1:1", "10.0.0.2:1"])
    directory = proxy_directory(cfg, None)
    assert not directory.discovering
    assert directory.addresses() == ["10.0.0.2:1", "10.0.0.1:1"]
    directory.latency_s.update({"10.0.0.1:1": 0.001, "10.0.0.2:1": 0.5})
    assert directory._order(directory.addresses()) == ["10.0.0.2:1", "10.0.0.1:1"]
    with pytest.raises(ValueError, match="not HOST:PORT"):
        ProxyDirectory("c", ["no-port"])


def test_the_registry_is_read_again_only_when_it_changes(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    try:
        register(ledger, "127.0.0.1:7001")
        directory = ProxyDirectory("c", [], ledger)
        assert directory.addresses() == []  # nothing read yet
        assert directory.read() and directory.addresses() == ["127.0.0.1:7001"]
        assert not directory.read()  # same version: nothing re-read
        register(ledger, "127.0.0.1:7002")
        register(ledger, "not an endpoint")  # ignored, with a warning
        assert directory.read()
        assert sorted(directory.addresses()) == ["127.0.0.1:7001", "127.0.0.1:7002"]
    finally:
        ledger.close()


def test_a_proxy_that_does_not_answer_goes_last(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    listener = socket.create_server(("127.0.0.1", 0))
    closed = socket.create_server(("127.0.0.1", 0))
    up, down = (f"127.0.0.1:{s.getsockname()[1]}" for s in (listener, closed))
    closed.close()
    try:
        for endpoint in (down, up):
            register(ledger, endpoint)
        for name in ("a", "b", "c", "d"):  # whatever each node's own order among equals
            directory = ProxyDirectory(name, [], ledger, probe_timeout_s=1.0)
            asyncio.run(directory.refresh(probe=True))
            assert directory.addresses() == [up, down]
            assert directory.latency_ms()[down] is None and directory.latency_ms()[up] is not None
    finally:
        listener.close()
        ledger.close()


def test_equally_near_proxies_are_spread_over_the_nodes_and_nearer_ones_come_first() -> None:
    proxies = [f"10.0.0.{i}:10100" for i in range(1, 5)]
    firsts = set()
    for n in range(40):
        directory = ProxyDirectory(f"worker-{n}", [], ledger=object())  # type: ignore[arg-type]
        directory.latency_s.update(dict.fromkeys(proxies, 1.5 * LATENCY_BUCKET_S))
        firsts.add(directory._order(proxies)[0])
        directory.latency_s[proxies[3]] = 3.5 * LATENCY_BUCKET_S  # a slower one goes after all the others
        assert directory._order(proxies)[-1] == proxies[3]
        directory.latency_s[proxies[2]] = 0.5 * LATENCY_BUCKET_S  # one in a nearer bucket comes first for everyone
        assert directory._order(proxies)[0] == proxies[2]
    assert firsts == set(proxies)


def test_a_worker_config_discovers_or_pins(tmp_path: Path) -> None:
    pinned = WorkerConfig(name="w", proxy="127.0.0.1:1", proxies=["127.0.0.1:2"])
    assert proxy_directory(pinned, None).addresses() == ["127.0.0.1:1", "127.0.0.1:2"]
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    try:
        register(ledger, "127.0.0.1:3")
        found = proxy_directory(WorkerConfig(name="w", discover_proxies=True), ledger)
        assert found.discovering and found.read() and found.addresses() == ["127.0.0.1:3"]
    finally:
        ledger.close()
