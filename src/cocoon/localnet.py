"""`cocoon up`: a whole network on this machine (ledger, proxy, workers, client), one command.

Each role runs as its own OS process with its own config file under the state dir; what was started is
described in STATE_DIR/localnet.json so that tools and tests can find it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from cocoon.config import ClientConfig, CommonConfig, ProxyConfig, WorkerConfig, dump_config
from cocoon.fsutil import private_dir, write_atomically
from cocoon.ledger import devnet
from cocoon.ledger.base import Terms
from cocoon.nodekeys import NodeKeys

console = Console(stderr=True)

LOCALNET_FILE = "localnet.json"


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

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.stats_port}"

    def describe(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"role": self.role, "name": self.name, "pid": self.proc.pid if self.proc else None,
                                 "stats_url": self.stats_url, "config": str(self.config_path),
                                 "log": str(self.log_path)}
        if self.api_url:
            entry["api_url"] = self.api_url
        return entry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in each child before exec: if `cocoon up` is killed outright, its children get SIGTERM."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalNet:
    def __init__(self, state_dir: Path, *, workers: int, engine: str, port: int,
                 engine_options: dict[str, Any], max_active: int, attestation: str = "fake",
                 proxy_options: dict[str, Any] | None = None) -> None:
        """`proxy_options`: ProxyConfig fields to set (limits, timeouts)."""
        self.state_dir = state_dir.resolve()
        self.nodes: list[NodeProcess] = []
        private_dir(self.state_dir / "logs")  # the state dir holds keys: owner-only
        self.proxy_port = free_port()
        proxy_addr = f"127.0.0.1:{self.proxy_port}"
        # every role pays or gets paid on one local chain in the state dir (ledger/devnet.py)
        common = {"state_dir": str(self.state_dir), "policy": "dev", "payments": True}
        self._common = common
        self.proxy_cfg = ProxyConfig(name="proxy-1", port=self.proxy_port, attestation=attestation,
                                     image="cocoon-proxy-dev", stats_port=free_port(), **common,
                                     **(proxy_options or {}))
        self._add("proxy", self.proxy_cfg)
        options = dict(engine_options)
        if engine == "embedded" and "threads" not in options:
            options["threads"] = max(1, (os.cpu_count() or 2) // max(workers, 1))
        self._worker = {"proxy": proxy_addr, "engine": engine, "engine_options": options,
                        "attestation": attestation, "image": "cocoon-worker-dev", "max_active_requests": max_active}
        for i in range(1, workers + 1):
            self.add_worker(f"worker-{i}")
        self.add_client("client-1", port)

    def add_worker(self, name: str, **options: Any) -> NodeProcess:
        """One more worker process like the others, with `options` (WorkerConfig fields) of its own; before
        start(), or after it and then spawn()ed."""
        return self._add("worker", WorkerConfig(name=name, stats_port=free_port(),
                                                **{**self._worker, **options}, **self._common))

    def add_client(self, name: str, port: int) -> NodeProcess:
        """One more client process, before start(): its own key, so the proxy sees another client."""
        node = self._add("client", ClientConfig(name=name, proxy=f"127.0.0.1:{self.proxy_port}", api_port=port,
                                                stats_port=free_port(), **self._common))
        node.api_url = f"http://127.0.0.1:{port}/v1"
        return node

    def _add(self, role: str, cfg: CommonConfig) -> NodeProcess:
        path = self.state_dir / f"{cfg.name}.toml"
        path.write_text(dump_config(cfg))
        node = NodeProcess(role, cfg.name, path, self.state_dir / "logs" / f"{cfg.name}.log", cfg.stats_port, cfg)
        self.nodes.append(node)
        return node

    @property
    def client(self) -> NodeProcess:
        return next(n for n in self.nodes if n.role == "client")

    def spawn(self, node: NodeProcess) -> None:
        log = node.log_path.open("ab")
        node.proc = subprocess.Popen(
            [sys.executable, "-m", "cocoon", node.role, "--config", str(node.config_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
            start_new_session=True,  # Ctrl-C reaches `cocoon up` only; it stops the children in order
        )
        log.close()

    def prepare_ledger(self) -> None:
        """Deploy the root on the local chain (once), fund every party's wallet, register and stake the proxy.

        The wallets and the voucher key are each node's own, sealed to it: they are opened here through the
        key service each node uses (the fake platform's, on this machine)."""
        endpoint = f"{self.proxy_cfg.host}:{self.proxy_port}"
        proxy_keys = NodeKeys("proxy", self.proxy_cfg)
        devnet.prepare(self.state_dir,
                       proxies=[devnet.ProxySpec(endpoint, proxy_keys.wallet(), proxy_keys.voucher_key())],
                       parties=[NodeKeys(n.role, n.config).wallet() for n in self.nodes if n.role != "proxy"],
                       prices=self.proxy_cfg.prices, terms=Terms()).close()

    def start(self, timeout_s: float) -> None:
        with console.status("starting the local ledger, proxy, workers and client…") as status:
            self.prepare_ledger()
            for node in self.nodes:
                self.spawn(node)
            self.write_state()
            deadline = time.monotonic() + timeout_s
            for node in self.nodes:
                status.update(f"waiting for {node.name} ({node.role}) to answer on {node.stats_url}…")
                self._wait(lambda n=node: _get_json(f"{n.stats_url}/healthz") is not None, node, deadline)
            workers = [n for n in self.nodes if n.role == "worker"]
            status.update(f"loading the model on {len(workers)} worker(s) and linking them to the proxy…")
            proxy = next(n for n in self.nodes if n.role == "proxy")
            self._wait(lambda: len((_get_json(f"{proxy.stats_url}/jsonstats") or {}).get("workers", []))
                       >= len(workers), proxy, deadline)
            for client in (n for n in self.nodes if n.role == "client"):
                status.update(f"waiting for {client.name} to link to the proxy…")
                self._wait(lambda c=client: (_get_json(f"{c.stats_url}/jsonstats") or {}).get("proxy_connected"),
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

    def write_state(self) -> None:
        state = {"state_dir": str(self.state_dir), "api_url": self.client.api_url, "pid": os.getpid(),
                 "processes": [n.describe() for n in self.nodes]}
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
        console.print("stats: /healthz, /jsonstats, /metrics on each stats URL")
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
        for role in ("client", "worker", "proxy"):
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
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / LOCALNET_FILE).unlink()


def _get_json(url: str) -> Any:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_up(state_dir: Path, *, workers: int, engine: str, port: int, engine_options: dict[str, Any],
           max_active: int, ready_timeout_s: float) -> int:
    net = LocalNet(state_dir, workers=workers, engine=engine, port=port, engine_options=engine_options,
                   max_active=max_active)
    stop_requested: list[bool] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stop_requested.append(True)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        net.start(ready_timeout_s)
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
