"""A proxy holding many attested worker links: its memory, and its cost per routed request, as links grow.

    .venv/bin/python bench/proxy_links.py [--links 1000] [--requests 500] [--concurrency 4] [--idle-s 10]
                                          [--plain] [--json]

Three processes on 127.0.0.1, no chain (payments off, as `cocoon proxy` runs without `ton_api`):
- a real proxy (`python -m cocoon proxy --config ...`, `fake` attestation, default `dev` policy), whose
  `[admission] max_links_per_address` this bench raises to the link count: every simulated worker dials from
  127.0.0.1, and the default (256) would refuse the rest;
- a real client (`python -m cocoon client`), whose HTTP API the requests go through: sealed end to end by default
  (each body sealed to workers the client verified itself, as a client does unless configured plain), `--plain`
  sends them in the clear;
- this process, which opens the links: each one a simulated worker with its own key, HPKE key and fake-quoted
  RA-TLS certificate, dialing the proxy with the worker's own `Dialer` (mutual attested handshake, the worker's
  hello announcing `fake-model`), and answering each routed request with the worker's own `Execution` on one shared
  `fake` engine (a short canned stream), with a signed receipt, sealed when the request was. It is also the load
  generator (the HTTP client of `cocoon bench`).

Steps of 0, 10, 100, 1,000 links (those up to `--links`, and `--links` itself). At each: the links opened (the
proxy's CPU per handshake), every link admitted (the proxy's /jsonstats lists it), the proxy's VmRSS, its idle CPU
over `--idle-s` (pings: every link is pinged, and its certificate re-verified, every 10 s), then `--requests`
streamed requests at `--concurrency` through the client: answered, errors, the proxy's CPU per request (as
measured, and less its idle rate over the same time), the latency, and its VmRSS after them. A selection cost that
does not grow with the links shows as a flat CPU per request. Progress goes to stderr, the report to stdout.
Every process started here is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cocoon.attest.fake import FakeBackend, fake_image_hash
from cocoon.attest.policy import DEV_POLICY
from cocoon.attest.trustconfig import trust_config
from cocoon.bench import CpuMeter, machine, run_load
from cocoon.config import AdmissionConfig, ClientConfig, ProxyConfig, WorkerConfig, dump_config
from cocoon.inference.fake import FakeEngine
from cocoon.localnet import die_with_parent, free_port
from cocoon.ratls.cert import CertVerifier, make_identity
from cocoon.wire.connection import Connection, hello
from cocoon.wire.dialer import Dialer
from cocoon.wire.messages import Cancel, Hello, Inbound, Request, WorkerParams
from cocoon.worker.execution import Execution
from cocoon.worker.notary import Notary
from cocoon.worker.sealing import Unsealer

MODEL = "fake-model"
REPLY_TOKENS = 8  # a short canned stream: what is measured is the proxy's routing and relaying, not an engine
WORKER_IMAGE = "cocoon-worker-dev"
COEFFICIENT = 1000
MAX_ACTIVE = 4  # per simulated worker
DIAL_PARALLEL = 16  # handshakes in progress at once (the proxy's per-address handshake bound is 32)
LINK_TIMEOUT_S = 30.0
START_TIMEOUT_S = 60.0
STEPS = (0, 10, 100, 1_000)


def progress(msg: str) -> None:
    print(f"[proxy_links] {msg}", file=sys.stderr, flush=True)


def status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in kB, from /proc/PID/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE toward `needed`, within the hard limit (children inherit it: the
    proxy holds one descriptor per link, this process one per link too). Returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the processes ------------------------------------------------------------------------------------------------
@dataclass
class Nodes:
    """The proxy and client processes, their ports, and their logs (in the run's temporary directory)."""

    root: Path
    links: int
    plain: bool
    proxy_port: int = field(default_factory=free_port)
    proxy_stats: int = field(default_factory=free_port)
    client_api: int = field(default_factory=free_port)
    client_stats: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def admission(self) -> AdmissionConfig:
        # every simulated worker dials from 127.0.0.1: one source address holds all the links
        return AdmissionConfig(max_links_per_address=self.links + 16)

    def start(self) -> None:
        proxy = ProxyConfig(name="proxy", state_dir=str(self.root / "proxy"), port=self.proxy_port,
                            stats_port=self.proxy_stats, image="cocoon-proxy-dev", admission=self.admission)
        client = ClientConfig(name="client", state_dir=str(self.root / "client"),
                              proxy=f"127.0.0.1:{self.proxy_port}", api_port=self.client_api,
                              stats_port=self.client_stats, seal_requests=not self.plain)
        self._spawn("proxy", dump_config(proxy))
        self._wait(f"http://127.0.0.1:{self.proxy_stats}/jsonstats", lambda s: True, "the proxy to listen")
        self._spawn("client", dump_config(client))
        self._wait(f"http://127.0.0.1:{self.client_stats}/jsonstats", lambda s: s.get("proxy_connected"),
                   "the client to link to the proxy")

    def _spawn(self, role: str, config: str) -> None:
        path = self.root / f"{role}.toml"
        path.write_text(config)
        with (self.root / f"{role}.log").open("wb") as log:
            self.procs[role] = subprocess.Popen(
                [sys.executable, "-m", "cocoon", role, "--config", str(path)], stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
                start_new_session=True)  # Ctrl-C reaches this process only; it stops them

    def _wait(self, url: str, ready: Any, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for role, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"the {role} exited ({proc.returncode}); see {self.root / (role + '.log')}")
            with contextlib.suppress(OSError, ValueError):
                if ready(get_json(url, timeout=2)):
                    return
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}")

    def linked_workers(self) -> int:
        return len(get_json(f"http://127.0.0.1:{self.proxy_stats}/jsonstats", timeout=30)["workers"])

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- the simulated workers ----------------------------------------------------------------------------------------
class SimWorker:
    """One worker link: its own attested identity and HPKE key, the worker's dialer and hello, and the worker's own
    execution of each routed request (receipt signed with its key; a sealed request opened and its answer sealed)."""

    def __init__(self, i: int, address: str, engine: FakeEngine, verifier: CertVerifier, config: Any) -> None:
        hpke = X25519PrivateKey.generate()
        self.identity = make_identity("worker", FakeBackend(WORKER_IMAGE), hpke_key=hpke, config=config)
        self.name = f"sim-{i}"
        self.engine = engine
        self.unsealer = Unsealer(hpke)
        self.notary = Notary(self.identity.private_key.sign, self.identity.public_key, COEFFICIENT,
                             image_hash=fake_image_hash(WORKER_IMAGE))
        self.running: dict[int, asyncio.Task[None]] = {}
        self.served = 0
        self.dialer = Dialer(lambda: [address], self.identity, verifier, self._hello, self._on_inbound)

    def _hello(self) -> Hello:
        return hello("worker", self.name, worker=WorkerParams(models=[MODEL], coefficient=COEFFICIENT,
                                                              max_active_requests=MAX_ACTIVE))

    def _on_inbound(self, conn: Connection, msg: Inbound) -> None:
        if isinstance(msg, Request):
            self.running[msg.call_id] = conn.spawn(self._run(conn, msg))
        elif isinstance(msg, Cancel):
            task = self.running.get(msg.call_id)
            if task is not None:
                task.cancel()

    async def _run(self, conn: Connection, req: Request) -> None:
        try:
            await Execution(self.engine, req, conn.send, self.notary, self.unsealer).run()
            self.served += 1
        finally:
            self.running.pop(req.call_id, None)


class Fleet:
    def __init__(self, address: str) -> None:
        self.address = address
        self.engine = FakeEngine(MODEL, reply_tokens=REPLY_TOKENS)
        self.verifier = CertVerifier(DEV_POLICY, {"proxy"})
        worker_cfg = WorkerConfig(name="sim", engine="fake", coefficient=COEFFICIENT)
        self.config = trust_config("worker", worker_cfg, DEV_POLICY)
        self.workers: list[SimWorker] = []
        self.failed = 0  # links not up within LINK_TIMEOUT_S

    async def grow(self, target: int) -> None:
        """Open links until `target` are up, DIAL_PARALLEL handshakes at a time."""
        while len(self.workers) < target:
            batch = [SimWorker(len(self.workers) + j, self.address, self.engine, self.verifier, self.config)
                     for j in range(min(DIAL_PARALLEL, target - len(self.workers)))]
            self.workers += batch
            for w in batch:
                w.dialer.start()
            ups = await asyncio.gather(*(w.dialer.wait_connected(LINK_TIMEOUT_S) for w in batch))
            self.failed += sum(up is None for up in ups)

    @property
    def connected(self) -> int:
        return sum(w.dialer.connected for w in self.workers)

    async def stop(self) -> None:
        await asyncio.gather(*(w.dialer.stop("bench over") for w in self.workers), return_exceptions=True)


# -- the run ------------------------------------------------------------------------------------------------------
async def wait_admitted(nodes: Nodes, target: int) -> int:
    deadline = time.monotonic() + LINK_TIMEOUT_S
    linked = -1
    while time.monotonic() < deadline:
        linked = await asyncio.to_thread(nodes.linked_workers)
        if linked >= target:
            break
        await asyncio.sleep(0.5)
    return linked


async def measure_step(nodes: Nodes, fleet: Fleet, target: int, args: argparse.Namespace) -> dict[str, Any]:
    proxy_pid = nodes.procs["proxy"].pid
    meter = CpuMeter({"proxy": proxy_pid})
    opened = target - len(fleet.workers)
    meter.start()
    started = time.perf_counter()
    await fleet.grow(target)
    open_s = time.perf_counter() - started
    admitted = await wait_admitted(nodes, target)
    meter.stop()
    step: dict[str, Any] = {"links": target, "connected": fleet.connected, "admitted": admitted,
                            "open_s": round(open_s, 2)}
    if opened > 0:
        step["proxy_cpu_ms_per_link_opened"] = round(meter.used_s["proxy"] * 1000 / opened, 3)
    await asyncio.sleep(1.0)  # what the hello's handling left in flight settles
    step["rss_mb"] = round(status_kb(proxy_pid)["VmRSS"] / 1024, 1)
    progress(f"{target} links: {admitted} admitted in {open_s:.1f}s, proxy RSS {step['rss_mb']} MB; "
             f"idle for {args.idle_s:g}s")
    meter.start()
    await asyncio.sleep(args.idle_s)
    meter.stop()
    idle_ms_per_s = meter.used_s["proxy"] * 1000 / args.idle_s
    step["proxy_idle_cpu_ms_per_s"] = round(idle_ms_per_s, 3)
    if target == 0 or args.requests == 0:
        return step
    meter.start()
    load = await run_load(f"http://127.0.0.1:{nodes.client_api}/v1", MODEL, args.requests, args.concurrency)
    meter.stop()
    used_ms = meter.used_s["proxy"] * 1000
    answered = load.requests
    step["requests"] = {
        "sent": args.requests, "answered": answered, "errors": load.errors, "seconds": round(load.seconds, 3),
        "per_s": round(load.rps, 1),
        "proxy_cpu_ms_per_request": round(used_ms / answered, 3) if answered else None,
        # less what the proxy spends idle over the same time (pings, re-verification): what routing and
        # relaying one request costs
        "proxy_cpu_ms_per_request_net": round((used_ms - idle_ms_per_s * load.seconds) / answered, 3)
        if answered else None,
        "p50_ms": round(load.pct(load.latencies_ms, 0.5), 2), "p99_ms": round(load.pct(load.latencies_ms, 0.99), 2),
    }
    rss = status_kb(proxy_pid)
    step["rss_after_requests_mb"] = round(rss["VmRSS"] / 1024, 1)
    step["hwm_mb"] = round(rss["VmHWM"] / 1024, 1)
    r = step["requests"]
    progress(f"{target} links: {answered}/{args.requests} answered, proxy {r['proxy_cpu_ms_per_request']} ms CPU "
             f"per request ({r['proxy_cpu_ms_per_request_net']} net of idle), p50 {r['p50_ms']} ms, "
             f"RSS {step['rss_after_requests_mb']} MB")
    return step


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    # SIGTERM stops it as Ctrl-C does (asyncio.Runner's own handler): this task is cancelled, its `finally` runs
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)  # type: ignore[union-attr]
    fd_limit = raise_fd_limit(2 * args.links + 256)
    nodes = Nodes(root, args.links, args.plain)
    fleet: Fleet | None = None
    try:
        progress(f"starting a proxy and a client in {root}")
        nodes.start()  # in this thread, not a worker thread: a child's parent-death signal follows its thread
        progress(f"proxy pid {nodes.procs['proxy'].pid}, client pid {nodes.procs['client'].pid}")
        fleet = Fleet(f"127.0.0.1:{nodes.proxy_port}")
        steps = sorted({s for s in STEPS if s <= args.links} | {args.links})
        results = [await measure_step(nodes, fleet, target, args) for target in steps]
        served = sum(w.served for w in fleet.workers)
        return {
            "bench": "proxy_links",
            "machine": machine(),
            "links": args.links,
            "requests_per_step": args.requests,
            "concurrency": args.concurrency,
            "sealed": not args.plain,
            "reply_tokens": REPLY_TOKENS,
            "idle_s": args.idle_s,
            "fd_limit": fd_limit,
            "admission": {"max_links_per_address": nodes.admission.max_links_per_address},
            "pids": {role: proc.pid for role, proc in nodes.procs.items()},  # all stopped by now
            "steps": results,
            "links_failed": fleet.failed,
            "links_connected_at_end": fleet.connected,
            "served_by_workers": served,
            "rss_per_link_kb": _per_link_kb(results),
        }
    finally:
        if fleet is not None:
            await fleet.stop()
        nodes.stop()


def _per_link_kb(steps: list[dict[str, Any]]) -> float | None:
    """The proxy's RSS growth per link between the first and last step (before any request)."""
    first, last = steps[0], steps[-1]
    if last["links"] == first["links"]:
        return None
    return round((last["rss_mb"] - first["rss_mb"]) * 1024 / (last["links"] - first["links"]), 1)


def print_table(report: dict[str, Any]) -> None:
    print(f"proxy holding {report['links']} attested worker links ({report['machine']['cores']} cores; "
          f"{report['requests_per_step']} {'sealed' if report['sealed'] else 'plain'} streamed requests per step "
          f"at concurrency {report['concurrency']}, {report['reply_tokens']} tokens each)")
    print(f"{'links':>6} {'admitted':>8} {'RSS MB':>7} {'idle ms/s':>9} {'ms CPU/req':>10} {'net':>7} "
          f"{'p50 ms':>7} {'answered':>8} {'RSS after':>9}")
    for s in report["steps"]:
        r = s.get("requests") or {}
        print(f"{s['links']:>6} {s['admitted']:>8} {s['rss_mb']:>7} {s['proxy_idle_cpu_ms_per_s']:>9} "
              f"{r.get('proxy_cpu_ms_per_request', '-'):>10} {r.get('proxy_cpu_ms_per_request_net', '-'):>7} "
              f"{r.get('p50_ms', '-'):>7} {r.get('answered', '-'):>8} {s.get('rss_after_requests_mb', '-'):>9}")
    print(f"RSS per link: {report['rss_per_link_kb']} kB; links failed: {report['links_failed']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[3:]))
    parser.add_argument("--links", type=int, default=1000, help="worker links at the last step (default 1000)")
    parser.add_argument("--requests", type=int, default=500, help="requests per step (default 500; 0: none)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--idle-s", type=float, default=10.0,
                        help="seconds of idle CPU measured per step (default 10: one ping round)")
    parser.add_argument("--plain", action="store_true", help="requests in the clear (client seal_requests = false)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.links < 1 or args.requests < 0 or args.concurrency < 1 or args.idle_s <= 0:
        parser.error("--links and --concurrency must be at least 1, --requests at least 0, --idle-s positive")
    with tempfile.TemporaryDirectory(prefix="proxy-links-") as tmp:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                report = runner.run(run(args, Path(tmp)))
        except (KeyboardInterrupt, asyncio.CancelledError):
            progress("interrupted: every process it started is stopped")
            return 130
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
