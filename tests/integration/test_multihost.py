"""A network of hosts (`cocoon up --hosts`): a devnet, a key service, 2 proxies, 4 workers and 2 clients, each
process but the clients on a host of its own (a network namespace). Requests go through both clients; one proxy is
SIGKILLed: the clients fail over to the other one they find in the registry, the workers are served by it; then
every party's balance is read from the chain's HTTP API and every nanoTON is accounted for.

Skipped, with the reason printed, where namespaces cannot be created (not root, no iproute2)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cocoon import hosts
from cocoon.ledger.ton import TonLedger
from cocoon.ledger.toncenter import ToncenterTransport
from cocoon.ledger.wallet import raw_address
from tests.netutil import free_port, log_records, pid_alive, stop_process

WORKERS = 4
REQUESTS = 6  # per client, before and after the kill


def need_hosts() -> None:
    reason = hosts.unavailable_reason() or hosts.busy_reason()
    if reason:
        print(f"\nSKIPPED test_multihost: {reason}", file=sys.__stderr__)  # aloud, not only in the skip summary
        pytest.skip(reason)


def get(url: str, token: str | None = None, timeout: float = 5.0) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
        return json.loads(resp.read())


def chat(api_url: str, timeout: float = 30.0) -> dict[str, Any]:
    body = json.dumps({"model": "fake-model", "max_tokens": 8,
                       "messages": [{"role": "user", "content": "hello"}]}).encode()
    request = urllib.request.Request(f"{api_url}/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read())


def until(predicate: Any, what: str, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        with contextlib.suppress(OSError, ValueError, KeyError):
            if predicate():
                return
        assert time.monotonic() < deadline, f"not within {within_s:.0f}s: {what}"
        time.sleep(0.2)


class HostsNet:
    def __init__(self, state: Path, proc: subprocess.Popen[bytes]) -> None:
        self.state = state
        self.proc = proc
        self.info: dict[str, Any] = {}

    def by_role(self, role: str) -> list[dict[str, Any]]:
        return [p for p in self.info["processes"] if p["role"] == role]

    def stats(self, node: dict[str, Any]) -> Any:
        token = tomllib.loads(Path(node["config"]).read_text()).get("stats_token")
        return get(f"{node['stats_url']}/jsonstats", token)


@contextlib.contextmanager
def hosts_net(tmp_path: Path) -> Iterator[HostsNet]:
    state = tmp_path / "state"
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "cocoon", "up", "--hosts", "--engine", "fake", "--proxies", "2",
                             "--workers", str(WORKERS), "--clients", "2", "--max-active", "4",
                             "--port", str(free_port()), "--state-dir", str(state), "--ready-timeout", "150"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    net = HostsNet(state, proc)
    try:
        path = state / "localnet.json"

        def ready() -> bool:
            assert proc.poll() is None, "cocoon up exited:\n" + (tmp_path / "up.log").read_text()[-3000:]
            if not path.exists():
                return False
            net.info = json.loads(path.read_text())
            proxies = net.by_role("proxy")
            # `ready`: before it, cocoon up takes a proxy's exit for a failed start and stops the whole network
            return net.info.get("ready") is True and len(proxies) == 2 and all(
                p.get("pid") for p in net.info["processes"]) and all(
                len(net.stats(p)["workers"]) == WORKERS for p in proxies) and all(
                net.stats(c)["proxy_connected"] for c in net.by_role("client"))

        until(ready, "the network of hosts is up", within_s=170)
        yield net
    finally:
        pids = [p["pid"] for p in net.info.get("processes", []) if p.get("pid")]
        stop_process(proc, signal.SIGINT, timeout=60)
        for pid in pids:  # nothing a test started may outlive it
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()
        hosts.clean_if_unused()  # also after a crash of cocoon up itself


def test_a_network_of_hosts_fails_over_and_accounts_for_every_nanoton(tmp_path: Path) -> None:
    need_hosts()
    hosts.clean_if_unused()  # what an earlier crashed run left
    with hosts_net(tmp_path) as net:
        processes = net.info["processes"]
        hosted = [p for p in processes if p["role"] != "client"]
        assert len({p["netns"] for p in hosted}) == len(hosted) == 1 + 2 + WORKERS  # key service, proxies, workers
        assert len({p["address"] for p in hosted}) == len(hosted)
        assert all("netns" not in p and p["api_url"].startswith("http://127.0.0.1:") for p in net.by_role("client"))
        # every proxy and worker took its keys from the key service
        granted = [r.get("msg") for r in log_records((net.state / "logs" / "keys-1.log").read_text())].count(
            "handed out keys")
        assert granted >= 3 * (2 + WORKERS)
        clients = net.by_role("client")
        for client in clients:
            for _ in range(REQUESTS):
                assert chat(client["api_url"])["choices"][0]["finish_reason"] in ("stop", "length")

        # the proxy client-1 is linked to dies at once
        proxies = {f"{p['address']}:{tomllib.loads(Path(p['config']).read_text())['port']}": p
                   for p in net.by_role("proxy")}
        linked = net.stats(clients[0])["proxy"]
        victim = proxies[linked]
        survivor_address = next(a for a in proxies if a != linked)
        survivor = proxies[survivor_address]
        os.kill(victim["pid"], signal.SIGKILL)

        # the clients fail over to the proxy the registry lists, the workers are served by it
        for client in clients:
            until(lambda c=client: net.stats(c)["proxy"] == survivor_address and net.stats(c)["proxy_connected"],
                  f"{client['name']} linked to {survivor_address}")
        until(lambda: len(net.stats(survivor)["workers"]) == WORKERS, "every worker linked to the survivor")
        for worker in net.by_role("worker"):
            links = net.stats(worker)["proxies"]
            assert {"address": survivor_address, "connected": True} in links
        for client in clients:
            for _ in range(REQUESTS):
                assert chat(client["api_url"])["choices"][0]["finish_reason"] in ("stop", "length")

        # every party, as its node names it, before the nodes stop
        wallets = {net.stats(w)["wallet"] for w in net.by_role("worker")}
        client_stats = [net.stats(c) for c in clients]
        channels = {ch for c in client_stats for ch in c["channels"].values()}
        wallets |= {c["wallet"] for c in client_stats}
        for group in (clients, net.by_role("worker"), [survivor]):  # in cocoon up's order: the survivor's stop
            for node in group:                                        # claims and commits last
                os.kill(node["pid"], signal.SIGTERM)
            for node in group:
                until(lambda n=node: not pid_alive(n["pid"]), f"{node['name']} stopped")
        accounted(net.info["chain"], wallets, channels)


def accounted(chain: dict[str, Any], wallets: set[str], channels: set[str]) -> None:
    """Every nanoTON the faucet handed out is in a party's balance or was paid as a fee, each balance read from the
    chain's HTTP API; and no account outside these parties holds any."""
    api = chain["api"]
    info = get(f"{chain['url']}/devnet/info")["result"]
    ledger = TonLedger(chain["root"], ToncenterTransport(api, poll_s=0.05), sync_s=3600)
    try:
        proxies = ledger.proxies()
        # whoever sent the root a message: the devnet's genesis wallet (it deployed the root and handed it over)
        # and the registry's owner; then every node's wallet and channel, each proxy's contract and operator
        senders = {t["in_msg"]["source"] for t in get(f"{api}/getTransactions?address={chain['root']}&limit=100")[
            "result"] if t["in_msg"]["source"]}
        accounts = {chain["root"], chain["owner"], *senders, *wallets, *channels}
        for proxy in proxies:
            accounts |= {proxy.address, proxy.owner}
            accounts |= {ledger.worker_channel_address(proxy.address, w) for w in wallets}
    finally:
        ledger.close()
    assert len(proxies) == 2 and len(channels) == 4  # a channel per client and proxy

    def balance(address: str) -> int:
        return int(get(f"{api}/getAddressBalance?address={address}")["result"])

    balances = {a: balance(a) for a in {raw_address(a) for a in accounts}}
    audit = get(f"{chain['url']}/devnet/audit")["result"]
    fees, minted, faucet = int(audit["fees"]), int(audit["minted"]), balance(info["faucet"])
    deposits = minted - faucet  # what the faucet handed out
    assert deposits == sum(balances.values()) + fees, (deposits, sum(balances.values()), fees)
    assert faucet + sum(balances.values()) == int(audit["wallets"]) + int(audit["accounts"])  # nothing elsewhere
    assert fees > 0 and all(balances[w] > 0 for w in wallets)
