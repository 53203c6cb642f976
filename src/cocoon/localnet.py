"""`cocoon up`: a whole network on this machine (a devnet chain, proxies, workers, clients), one command.

The chain is `cocoon chain serve` in its own process and directory (STATE_DIR/chain), reached by every role over
its toncenter-v2 HTTP API, as a real network's would be; its root registry is owned by a standard wallet whose key
`cocoon up` keeps (STATE_DIR/owner.key), and coins come from its faucet. Each role runs as its own OS process with
its own config file (STATE_DIR/NAME.toml) and its own state directory (STATE_DIR/NAME): no file is opened by two
roles. What was started is described in STATE_DIR/localnet.json so that tools and tests can find it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from cocoon.attest.fake import fake_image_hash
from cocoon.chain.devnet import CHAIN_FILE
from cocoon.config import (
    ClientConfig,
    CommonConfig,
    KeysConfig,
    ProxyConfig,
    RelayConfig,
    WorkerConfig,
    dump_config,
)
from cocoon.fsutil import SECRET_MODE, create_once, private_dir, write_atomically
from cocoon.hosts import Host, HostNetwork, unavailable_reason
from cocoon.ledger import devnet
from cocoon.ledger.base import Terms
from cocoon.ledger.owner import RootOwner
from cocoon.ledger.ton import TonLedger, wallet_v4r2_address
from cocoon.ledger.toncenter import ToncenterTransport
from cocoon.ledger.wallet import Wallet
from cocoon.nodekeys import NodeKeys
from cocoon.observe.netview import Member, NetworkDashboard

console = Console(stderr=True)

LOCALNET_FILE = "localnet.json"
CHAIN_DIR = "chain"
OWNER_KEY = "owner.key"
BLOCK_INTERVAL_S = 0.5


@dataclass
class NodeProcess:
    role: str
    name: str
    config_path: Path
    log_path: Path
    stats_port: int
    config: CommonConfig
    proc: subprocess.Popen[bytes] | None = None
    api_url: str | None = None
    host: Host | None = None  # with --hosts: the namespace it runs in

    @property
    def stats_url(self) -> str:
        return f"http://{self.config.stats_host}:{self.stats_port}"

    def stats(self, path: str = "/jsonstats") -> Any:
        return _get_json(f"{self.stats_url}{path}", self.config.stats_token)

    def describe(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"role": self.role, "name": self.name, "pid": self.proc.pid if self.proc else None,
                                 "stats_url": self.stats_url, "config": str(self.config_path),
                                 "log": str(self.log_path)}
        if self.api_url:
            entry["api_url"] = self.api_url
        if self.host is not None:
            entry.update(netns=self.host.netns, address=self.host.address)
        return entry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortRange:
    """Hands out free ports on 127.0.0.1 from `lo`..`hi` (inclusive), or any free port when there is no range."""

    def __init__(self, lo: int | None = None, hi: int | None = None) -> None:
        if (lo is None) != (hi is None) or (lo is not None and hi is not None and not 1024 <= lo <= hi <= 65535):
            raise ValueError(f"port range {lo}-{hi}: expected A-B with 1024 <= A <= B <= 65535")
        self.lo, self.hi = lo, hi
        self._taken: set[int] = set()

    @classmethod
    def parse(cls, text: str | None) -> PortRange:
        if not text:
            return cls()
        lo, sep, hi = text.partition("-")
        if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
            raise ValueError(f"port range {text!r}: expected A-B, e.g. 20000-20099")
        return cls(int(lo), int(hi))

    def __contains__(self, port: int) -> bool:
        return self.lo is None or (self.lo <= port <= (self.hi or 0))

    def take(self) -> int:
        if self.lo is None or self.hi is None:
            return free_port()
        for port in range(self.lo, self.hi + 1):
            if port in self._taken:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            self._taken.add(port)
            return port
        raise ValueError(f"no free port left in {self.lo}-{self.hi} (every process of the network needs one: "
                         "proxy, stats of each process, client API, dashboard)")

    def reserve(self, port: int) -> int:
        """A port chosen elsewhere (the client API's): it must lie in the range."""
        if port not in self:
            raise ValueError(f"port {port} is outside --port-range {self.lo}-{self.hi}")
        self._taken.add(port)
        return port


def default_max_active(engine: str, cores: int) -> int:
    """Concurrent requests per worker that suit the engine on this machine.

    embedded: llama.cpp runs one generation at a time per model, so one request runs and one waits, ready to
    start the moment the other ends; fake: answers cost the worker only the relaying, so many per core;
    an OpenAI-compatible server batches on its own hardware: a few per core of the relaying worker.
    """
    if engine == "embedded":
        return 2
    if engine == "fake":
        return 32 * max(cores, 1)
    return 8 * max(cores, 1)


def die_with_parent() -> None:
    """Runs in each child before exec: if its parent (`cocoon up`, a bench) is killed outright, it gets SIGTERM."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalNet:
    def __init__(self, state_dir: Path, *, workers: int, engine: str, port: int,
                 engine_options: dict[str, Any], max_active: int, attestation: str = "fake",
                 proxy_options: dict[str, Any] | None = None, ports: PortRange | None = None,
                 relay: bool = False, proxies: int = 1, clients: int = 1, hosts: bool = False,
                 client_options: dict[str, Any] | None = None, workloads: list[str] | None = None,
                 block_interval_s: float = BLOCK_INTERVAL_S) -> None:
        """`proxy_options`: ProxyConfig fields to set (limits, timeouts); `ports`: where every port comes from;
        `relay`: a relay process (`cocoon relay`) that the client sends every request through; `proxies`: how many
        proxies, each registered in the root, where clients and workers find them; `clients`: how many clients (the
        first's API on `port`); `hosts`: every process but the clients in a network namespace of its own
        (hosts.py), with a key service (`cocoon keys`) that the proxies and workers take their keys from;
        `workloads`: what the workers serve (WorkerConfig's default: llm and media); `block_interval_s`: the
        devnet's."""
        self.state_dir = state_dir.resolve()
        self.hostnet = HostNetwork() if hosts else None
        # stats ports off loopback need a token: one for the whole network, kept in the configs (0600 state dir)
        self._stats_token = secrets.token_hex(16) if hosts else None
        self.nodes: list[NodeProcess] = []
        self.ports = ports or PortRange()
        self.ports.reserve(port)
        self.dashboard: _DashboardThread | None = None
        self.ready = False  # set once start() returned: written to localnet.json
        private_dir(self.state_dir / "logs")  # the state dir holds keys: owner-only
        self.block_interval_s = block_interval_s
        # the devnet: on loopback, or with --hosts on a host of its own that every other one reaches
        self.chain_host = self.hostnet.plan("chain") if self.hostnet is not None else None
        self.chain_port = self.ports.take()
        self.chain_url = f"http://{self.chain_host.address if self.chain_host else '127.0.0.1'}:{self.chain_port}"
        self.chain_proc: subprocess.Popen[bytes] | None = None
        self.root = ""  # the devnet's root registry, known once it runs: the configs name it
        self.fresh_chain = True  # whether this start creates the devnet's chain
        # every role pays or gets paid on the devnet, over its HTTP API (ledger/network.py), each in its own dir
        common = {"policy": "dev", "payments": True, "network": "devnet"}
        self._common = common
        self.key_service = self._add_key_service("keys-1") if hosts else ""
        keys = {"key_service": self.key_service} if hosts else {}
        self.proxy_cfgs = []
        for i in range(1, proxies + 1):
            name = f"proxy-{i}"
            placed = self._placed(name)
            self.proxy_cfgs.append(ProxyConfig(
                name=name, port=self.ports.take(), attestation=attestation, image="cocoon-proxy-dev",
                stats_port=self.ports.take(), **{"host": placed["stats_host"]} if hosts else {}, **placed, **keys,
                state_dir=self._node_dir(name), **common, **(proxy_options or {})))
        for cfg in self.proxy_cfgs:
            self._add("proxy", cfg)
        self.proxy_cfg = self.proxy_cfgs[0]
        self.proxy_port = self.proxy_cfg.port
        proxy_addr = f"127.0.0.1:{self.proxy_port}"
        # clients and workers find the proxies in the root registry; a worker serves every proxy
        self._discovery = {"discover_proxies": True}
        options = dict(engine_options)
        if engine == "embedded" and "threads" not in options:
            options["threads"] = max(1, (os.cpu_count() or 2) // max(workers, 1))
        self._worker = {"proxy": proxy_addr, "engine": engine, "engine_options": options, **self._discovery,
                        "max_proxies": proxies, "attestation": attestation, "image": "cocoon-worker-dev",
                        "max_active_requests": max_active, **keys,
                        **({"workloads": workloads} if workloads is not None else {})}
        for i in range(1, workers + 1):
            self.add_worker(f"worker-{i}")
        self.relay_url = self.add_relay("relay-1").api_url if relay else None
        self.add_client("client-1", port, via_relay=self.relay_url, **(client_options or {}))
        for i in range(2, clients + 1):
            self.add_client(f"client-{i}", self.ports.take(), via_relay=self.relay_url)

    def _placed(self, name: str) -> dict[str, Any]:
        """With --hosts, the config fields that put process `name` on a host of its own: its stats port on its
        address (with the network's token); nothing otherwise."""
        if self.hostnet is None:
            return {}
        return {"stats_host": self.hostnet.plan(name).address, "stats_token": self._stats_token}

    def _add_key_service(self, name: str) -> str:
        """The key service on a host of its own (before start()); the address nodes reach it at."""
        placed = self._placed(name)
        cfg = KeysConfig(name=name, host=placed["stats_host"], port=self.ports.take(), image="cocoon-keys-dev",
                         stats_port=self.ports.take(), state_dir=self._node_dir(name), policy="dev",
                         network="devnet", **placed)
        self._add("keys", cfg)
        return f"{cfg.host}:{cfg.port}"

    def add_worker(self, name: str, **options: Any) -> NodeProcess:
        """One more worker process like the others, with `options` (WorkerConfig fields) of its own; before
        start(), or after it and then spawn()ed."""
        return self._add("worker", WorkerConfig(name=name, stats_port=self.ports.take(), **self._placed(name),
                                                state_dir=self._node_dir(name), **{**self._worker, **options},
                                                **self._common))

    def add_client(self, name: str, port: int, via_relay: str | None = None, **options: Any) -> NodeProcess:
        """One more client process, before start(): its own key, so the proxy sees another client. Through a relay
        it pays nothing itself: the relay is the client of record. `options`: ClientConfig fields of its own."""
        common = {**self._common, "payments": False} if via_relay else self._common
        node = self._add("client", ClientConfig(name=name, proxy=f"127.0.0.1:{self.proxy_port}", api_port=port,
                                                stats_port=self.ports.take(), via_relay=via_relay or "",
                                                state_dir=self._node_dir(name), **self._discovery, **common,
                                                **options))
        node.api_url = f"http://127.0.0.1:{port}/v1"
        return node

    def add_relay(self, name: str) -> NodeProcess:
        """A relay process, before start(): devices' Oblivious HTTP in, the proxy's gateway out, its own channel."""
        port = self.ports.take()
        # in the root namespace like the clients (with --hosts): a VPN provider's server outside the network, finding
        # the proxies in the root registry as they do
        node = self._add("relay", RelayConfig(name=name, proxy=f"127.0.0.1:{self.proxy_port}", api_port=port,
                                              stats_port=self.ports.take(), state_dir=self._node_dir(name),
                                              **self._discovery, **self._common))
        node.api_url = f"http://127.0.0.1:{port}"
        return node

    def _node_dir(self, name: str) -> str:
        return str(self.state_dir / name)

    def _add(self, role: str, cfg: CommonConfig) -> NodeProcess:
        path = self.state_dir / f"{cfg.name}.toml"
        node = NodeProcess(role, cfg.name, path, self.state_dir / "logs" / f"{cfg.name}.log", cfg.stats_port, cfg,
                           host=self.hostnet.hosts.get(cfg.name) if self.hostnet else None)
        self.nodes.append(node)
        if self.root:
            self._write_config(node)
        return node

    def _write_config(self, node: NodeProcess) -> None:
        """The node's config names the chain (once it runs): its API and its root registry."""
        node.config = msgspec.structs.replace(node.config, ton_api=self.chain_api, root=self.root)
        node.config_path.write_text(dump_config(node.config))

    @property
    def chain_api(self) -> str:
        return f"{self.chain_url}/api/v2"

    @property
    def chain_info(self) -> dict[str, Any]:
        """The devnet as localnet.json describes it."""
        info = {"url": self.chain_url, "api": self.chain_api, "root": self.root, "network": "devnet",
                "owner": self.owner_wallet().address, "pid": self.chain_proc.pid if self.chain_proc else None,
                "state_dir": str(self.state_dir / CHAIN_DIR),
                "log": str(self.state_dir / "logs" / "chain.log")}
        if self.chain_host is not None:
            info.update(netns=self.chain_host.netns, address=self.chain_host.address)
        return info

    def owner_wallet(self) -> Wallet:
        """The standard wallet that owns the devnet's root registry (its key kept by `cocoon up`, 0600)."""
        seed = create_once(self.state_dir / OWNER_KEY, os.urandom(32), SECRET_MODE)
        return Wallet(seed, wallet_v4r2_address(Wallet(seed).public_key))

    def start_chain(self, deadline: float) -> None:
        """`cocoon chain serve` in its own process and directory, its registry owned by `owner_wallet`; the configs
        then name its API and root."""
        log_path = self.state_dir / "logs" / "chain.log"
        self.fresh_chain = not (self.state_dir / CHAIN_DIR / CHAIN_FILE).exists()
        argv = [sys.executable, "-m", "cocoon", "chain", "serve", "--state-dir", str(self.state_dir / CHAIN_DIR),
                "--host", self.chain_host.address if self.chain_host else "127.0.0.1", "--port", str(self.chain_port),
                "--block-interval", str(self.block_interval_s), "--owner-key", self.owner_wallet().public_key.hex()]
        with log_path.open("ab") as log:
            self.chain_proc = subprocess.Popen(
                self.chain_host.command(argv) if self.chain_host else argv, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent, start_new_session=True)
        while (info := _get_json(f"{self.chain_url}/devnet/info")) is None:
            if self.chain_proc.poll() is not None:
                raise RuntimeError(f"the devnet exited with code {self.chain_proc.returncode}; see {log_path}:\n"
                                   + _tail(log_path))
            if time.monotonic() > deadline:
                raise RuntimeError(f"the devnet did not answer in time; see {log_path}:\n" + _tail(log_path))
            time.sleep(0.1)
        self.root = info["result"]["root"]
        for node in self.nodes:
            self._write_config(node)

    def _chain_ledger(self) -> TonLedger:
        return TonLedger(self.root, ToncenterTransport(self.chain_api, poll_s=min(self.block_interval_s, 0.25)),
                         sync_s=3600)

    @property
    def client(self) -> NodeProcess:
        return next(n for n in self.nodes if n.role == "client")

    def spawn(self, node: NodeProcess) -> None:
        log = node.log_path.open("ab")
        argv = [sys.executable, "-m", "cocoon", node.role, "--config", str(node.config_path)]
        node.proc = subprocess.Popen(
            node.host.command(argv) if node.host else argv,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
            start_new_session=True,  # Ctrl-C reaches `cocoon up` only; it stops the children in order
        )
        log.close()

    def prepare_ledger(self) -> None:
        """On the devnet, over its API: fund every party's wallet from its faucet, set the root's prices when the
        chain is new, register and stake every proxy (owner operations from the owner's standard wallet).

        The wallets and the voucher key are each node's own, sealed to it: they are opened here through the
        key service each node uses (the fake platform's in each node's own state dir, or with --hosts the key
        service)."""
        specs = []
        for cfg in self.proxy_cfgs:
            keys = NodeKeys("proxy", cfg)
            specs.append(devnet.ProxySpec(f"{cfg.host}:{cfg.port}", keys.wallet(), keys.voucher_key()))
        owner = self.owner_wallet()
        ledger = self._chain_ledger()
        try:
            devnet.provision(ledger, RootOwner(ledger, owner),
                             lambda needs: devnet.fund_from_faucet(self.chain_url, needs), proxies=specs,
                             # a relay pays as a client: its wallet is sealed to the client role
                             parties=[owner, *(NodeKeys("client" if n.role == "relay" else n.role, n.config).wallet()
                                               for n in self.nodes if n.role not in ("proxy", "keys"))],
                             # the proxy's prices are the root's when the network is created, as on a local chain
                             prices=self.proxy_cfg.prices if self.fresh_chain else None,
                             terms=Terms() if self.fresh_chain else None)
        finally:
            ledger.close()

    def allow_images(self) -> None:
        """The registry allows the network's proxy and worker images: the key service hands keys only to those."""
        owner = self.owner_wallet()
        devnet.fund_from_faucet(self.chain_url, [(owner, devnet.FUNDING)])
        ledger = self._chain_ledger()
        try:
            for role in ("proxy", "worker"):
                images = {n.config.image for n in self.nodes if n.role == role}
                RootOwner(ledger, owner).set_allowed_images(role, [fake_image_hash(i) for i in sorted(images)])
        finally:
            ledger.close()

    def start_hosts(self, deadline: float) -> None:
        """With --hosts: the namespaces and the bridge, then the key service, which the nodes' keys come from."""
        assert self.hostnet is not None
        self.hostnet.create()
        self.start_chain(deadline)
        self.allow_images()
        keys = next(n for n in self.nodes if n.role == "keys")
        self.spawn(keys)
        self._wait(lambda: keys.stats("/healthz") is not None, keys, deadline)

    def start(self, timeout_s: float) -> None:
        with console.status("starting the devnet, proxies, workers and client…") as status:
            deadline = time.monotonic() + timeout_s
            if self.hostnet is not None:
                status.update("creating a host (network namespace) per process and starting the key service…")
                self.start_hosts(deadline)
            else:
                self.start_chain(deadline)
            status.update("funding the wallets and registering the proxies on the devnet…")
            self.prepare_ledger()
            for node in self.nodes:
                if node.proc is None:
                    self.spawn(node)
            self.write_state()
            for node in self.nodes:
                status.update(f"waiting for {node.name} ({node.role}) to answer on {node.stats_url}…")
                self._wait(lambda n=node: n.stats("/healthz") is not None, node, deadline)
            workers = [n for n in self.nodes if n.role == "worker"]
            status.update(f"loading the model on {len(workers)} worker(s) and linking them to the proxy…")
            for proxy in (n for n in self.nodes if n.role == "proxy"):  # every worker serves every proxy
                self._wait(lambda p=proxy: len((p.stats() or {}).get("workers", []))
                           >= len(workers), proxy, deadline)
            for client in (n for n in self.nodes if n.role in ("client", "relay") and not _via_relay(n)):
                status.update(f"waiting for {client.name} to link to the proxy…")
                self._wait(lambda c=client: (c.stats() or {}).get("proxy_connected"),
                           client, deadline)

    def _wait(self, ready: Any, node: NodeProcess, deadline: float) -> None:
        while not ready():
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is not None:
                    raise RuntimeError(f"{n.name} exited with code {n.proc.returncode}; see {n.log_path}:\n"
                                       + _tail(n.log_path))
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} was not ready in time; see {node.log_path}:\n" + _tail(node.log_path))
            time.sleep(0.1)

    def serve_dashboard(self) -> str:
        """Serve the network view (every process's stats on one page) on a port of this process; its URL."""
        members = [Member(n.role, n.name, n.stats_url, n.config.stats_token) for n in self.nodes]
        self.dashboard = _DashboardThread(NetworkDashboard(members), self.ports.take())
        return self.dashboard.start()

    @property
    def dashboard_url(self) -> str | None:
        return self.dashboard.url if self.dashboard is not None else None

    def write_state(self) -> None:
        # `ready`: every process answered and linked; until then `cocoon up` still treats any exit as a failed
        # start and stops the network, so tools that stop or restart a process wait for it
        state = {"state_dir": str(self.state_dir), "api_url": self.client.api_url, "pid": os.getpid(),
                 "dashboard_url": self.dashboard_url, "processes": [n.describe() for n in self.nodes],
                 "chain": self.chain_info, "ready": self.ready}
        write_atomically(self.state_dir / LOCALNET_FILE, json.dumps(state, indent=2).encode(), 0o644)

    def print_summary(self) -> None:
        table = Table(title="cocoon local network", title_justify="left")
        for col in ("role", "name", "pid", "stats", "log"):
            table.add_column(col, overflow="fold")  # a URL cut with an ellipsis cannot be copied
        for n in self.nodes:
            table.add_row(n.role, n.name, str(n.proc.pid if n.proc else "-"), n.stats_url,
                          str(n.log_path.relative_to(self.state_dir.parent)
                              if n.log_path.is_relative_to(self.state_dir.parent) else n.log_path))
        console.print(table)
        console.print(f"[bold green]OpenAI-compatible API:[/] {self.client.api_url}   (state: "
                      f"{self.state_dir / LOCALNET_FILE})")
        if self.dashboard_url:
            console.print(f"[bold green]Dashboard:[/] {self.dashboard_url}   (the whole network; each process has "
                          "its own at STATS_URL/dashboard)")
        console.print("stats: /healthz, /jsonstats, /metrics, /dashboard on each stats URL; `cocoon status` in a "
                      "terminal")
        console.print("[yellow]dev policy: fake attestation accepted — NOT safe for production[/]")
        console.print("Press Ctrl-C to stop.")

    def watch(self, stop_requested: list[bool]) -> None:
        reported: set[str] = set()
        while not stop_requested:
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is not None and n.name not in reported:
                    reported.add(n.name)
                    console.print(f"[red]{n.name} exited with code {n.proc.returncode}[/] (log: {n.log_path})")
            time.sleep(0.2)

    def stop(self, grace_s: float = 10.0) -> None:
        # Client first (no new requests), then workers, then the proxy that settles the books.
        for role in ("client", "relay", "worker", "proxy", "keys"):
            procs = [n.proc for n in self.nodes if n.role == role and n.proc and n.proc.poll() is None]
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for p in procs:
                try:
                    p.wait(max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        # the chain last: the proxies' final claims and commits go to it
        if self.chain_proc is not None and self.chain_proc.poll() is None:
            self.chain_proc.send_signal(signal.SIGTERM)
            try:
                self.chain_proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.chain_proc.kill()
                self.chain_proc.wait()
        if self.dashboard is not None:
            self.dashboard.stop()
        if self.hostnet is not None:
            self.hostnet.destroy()
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / LOCALNET_FILE).unlink()


class _DashboardThread:
    """The network view's server, on its own event loop in a thread of `cocoon up` (which blocks in `watch`)."""

    def __init__(self, dashboard: NetworkDashboard, port: int, host: str = "127.0.0.1") -> None:
        self.dashboard = dashboard
        self.host, self.port = host, port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cocoon-dashboard", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/dashboard"

    def start(self) -> str:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"the network dashboard cannot listen on {self.host}:{self.port}: {self._error}")
        return self.url

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self.port = self._loop.run_until_complete(self.dashboard.start(self.host, self.port))
        except (OSError, ValueError) as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.dashboard.stop())
        self._loop.close()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


def _via_relay(node: NodeProcess) -> bool:
    return bool(getattr(node.config, "via_relay", ""))


def _get_json(url: str, token: str | None = None) -> Any:
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=1) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


WORKLOADS = ("llm", "media")


def parse_workloads(text: str) -> list[str]:
    """`llm,media` as a list; ValueError naming what is not a workload."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown or not names:
        raise ValueError(f"workloads are a comma-separated list of {', '.join(WORKLOADS)}, not {text!r}")
    return list(dict.fromkeys(names))


def run_up(state_dir: Path, *, workers: int, engine: str, port: int | None, engine_options: dict[str, Any],
           max_active: int | None, ready_timeout_s: float, port_range: str | None = None, relay: bool = False,
           proxies: int = 1, clients: int = 1, hosts: bool = False,
           workloads: list[str] | None = None, block_interval_s: float = BLOCK_INTERVAL_S) -> int:
    if hosts and (reason := unavailable_reason()):
        console.print(f"[red]cocoon up --hosts:[/] {reason}")
        return 2
    try:
        ports = PortRange.parse(port_range)
        api_port = port if port is not None else (10000 if ports.lo is None else ports.take())
        active = max_active if max_active is not None else default_max_active(engine, os.cpu_count() or 1)
        net = LocalNet(state_dir, workers=workers, engine=engine, port=api_port, engine_options=engine_options,
                       max_active=active, ports=ports, relay=relay, proxies=proxies, clients=clients, hosts=hosts,
                       workloads=workloads, block_interval_s=block_interval_s)
    except ValueError as exc:
        console.print(f"[red]cocoon up:[/] {exc}")
        return 2
    stop_requested: list[bool] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stop_requested.append(True)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        net.serve_dashboard()  # first: localnet.json names it from its first writing
        net.start(ready_timeout_s)
        net.ready = True
        net.write_state()
        net.print_summary()
        net.watch(stop_requested)
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        console.print(f"[red]cocoon up failed:[/] {exc}")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        console.print("stopping…")
        net.stop()
        console.print("stopped.")
    return 0


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs; values are read as JSON when they parse (numbers, booleans), else as strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"engine option {pair!r} is not key=value")
        try:
            out[key] = msgspec.json.decode(value)
        except msgspec.DecodeError:
            out[key] = value
    return out
