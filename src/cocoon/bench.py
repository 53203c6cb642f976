"""`cocoon bench`: the network path (client→proxy→worker→engine) against the engine alone.

Both runs hit the same `fake` engine process (50 chunks of 128 bytes per answer, no delay), at the same
concurrency, for the same number of streamed requests; the ratio of the two is the cost of the network. A second
phase at concurrency 1 gives the latency each path adds to a single request. Over each measured phase the CPU
time of every process (from /proc/PID/stat) is divided by the requests answered: CPU ms per request compares
machines, and a busy shared machine, better than wall-clock rates do.
The network run pays on the local chain; the report ends with the client's check of what it was charged (every
figure 0 on this honest traffic but the amounts charged and the vouchers superseded).

The network run is sealed end to end (every client's default); the same network also serves a second client
configured plain (`seal_requests = false`), measured the same way, so `sealed_ratio` (sealed / plain req/s) is
what sealing costs on the whole path, and `hpke` what it costs in CPU per request, measured in this process
(seal to the candidates, open, seal and open every chunk of an answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

from cocoon.localnet import LocalNet, free_port
from cocoon.openai import sse
from cocoon.seal import SealKey, seal_request

# what the client's /jsonstats says about its payments, in the report
PAYMENT_FIGURES = ("charged_nanoton", "vouchers_nanoton", "refused_vouchers", "superseded_vouchers",
                   "unexplained_nanoton", "unseen_answers", "overcharges", "overpriced_nanoton")

console = Console(stderr=True)

CHUNKS = 50
CHUNK_BYTES = 128
HOPS = ("client", "proxy", "worker")
C1_REQUESTS = 200  # concurrency-1 phase: enough for a stable median, short enough on 2 cores


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, from /proc/PID/stat (Linux).

    The command name (field 2) may hold spaces and parentheses, so fields are counted after its closing ')':
    utime and stime are fields 14 and 15 of the whole line, in clock ticks."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    """The machine the figures come from: cores and CPU model (Linux /proc/cpuinfo)."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cores": os.cpu_count(), "cpu_model": model}


class CpuMeter:
    """CPU time of named processes between start() and stop(), in ms per request answered."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self.used_s: dict[str, float] = {}

    def start(self) -> None:
        self._start = {role: cpu_seconds(pid) for role, pid in self.pids.items()}

    def stop(self) -> None:
        self.used_s = {role: cpu_seconds(pid) - self._start[role] for role, pid in self.pids.items()}

    def per_request_ms(self, requests: int) -> dict[str, float]:
        per = {role: round(used * 1000 / requests, 3) if requests else float("nan")
               for role, used in self.used_s.items()}
        per["total"] = round(sum(per.values()), 3)
        return per


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    ttfb_ms: list[float]
    headers_ms: list[float]  # until the answer's status and headers: the request's way there, its head's back
    hops_ms: dict[str, list[float]]  # the answers' x-cocoon-{client,proxy,worker}-ms headers (network only)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def p50(self, values: list[float]) -> float:
        """The median of one of this load's series, in ms to 0.01 (as reports show it)."""
        return round(self.pct(values, 0.5), 2)

    def pct(self, values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


async def run_load(base_url: str, model: str, requests: int, concurrency: int, chunks: int = CHUNKS) -> LoadResult:
    body = json.dumps({"model": model, "stream": True, "max_tokens": chunks,
                       "messages": [{"role": "user", "content": "benchmark prompt"}]}).encode()
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    ttfbs: list[float] = []
    headed: list[float] = []
    hops: dict[str, list[float]] = {hop: [] for hop in HOPS}
    errors = 0
    todo = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one() -> None:
            nonlocal errors
            start = time.perf_counter()
            first = None
            async with session.post(base_url + "/chat/completions", data=body, headers=headers) as resp:
                headers_at = time.perf_counter()
                for hop in HOPS:  # each hop's time until the answer's head reached it (cocoon's timing headers)
                    if (value := resp.headers.get(f"x-cocoon-{hop}-ms")) is not None:
                        hops[hop].append(float(value))
                if resp.status != 200:
                    errors += 1
                    await resp.read()
                    return
                done = False
                decoder = sse.SSEDecoder()
                async for chunk in resp.content.iter_any():
                    for payload in decoder.feed(chunk):
                        first = first or time.perf_counter()
                        done = payload == sse.DONE_PAYLOAD
                if not done:
                    errors += 1
                    return
            end = time.perf_counter()
            latencies.append((end - start) * 1000)
            ttfbs.append(((first or end) - start) * 1000)
            headed.append((headers_at - start) * 1000)

        async def lane() -> None:
            for _ in todo:
                try:
                    await one()
                except (aiohttp.ClientError, TimeoutError):
                    nonlocal errors
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return LoadResult(requests - errors, errors, elapsed, latencies, ttfbs, headed, hops)


async def flood(base_url: str, model: str, concurrency: int, stop: asyncio.Event) -> dict[str, int]:
    """Small requests on `concurrency` lanes, each sent as soon as the last one ended, until `stop` is set.

    Returns how many answers came back per status and error code ("200", "429 concurrency_limit_exceeded").
    """
    body = json.dumps({"model": model, "max_tokens": 4,
                       "messages": [{"role": "user", "content": "flood"}]}).encode()
    seen: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def lane() -> None:
            while not stop.is_set():
                async with session.post(base_url + "/chat/completions", data=body,
                                        headers={"Content-Type": "application/json"}) as resp:
                    raw = await resp.read()
                key = str(resp.status)
                if resp.status != 200:
                    key += " " + str((json.loads(raw).get("error") or {}).get("code"))
                seen[key] = seen.get(key, 0) + 1

        await asyncio.gather(*(lane() for _ in range(concurrency)))
    return seen


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=1).close()
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def measured(url: str, requests: int, concurrency: int, pids: dict[str, int], chunks: int = CHUNKS
             ) -> tuple[LoadResult, dict[str, float]]:
    """One load phase and the CPU ms per answered request of each process in `pids` over it."""
    meter = CpuMeter(pids)
    meter.start()
    result = asyncio.run(run_load(url, "fake-model", requests, concurrency, chunks))
    meter.stop()
    return result, meter.per_request_ms(result.requests)


def hpke_cost(candidates: int, rounds: int = 200, chunks: int = CHUNKS) -> dict[str, float]:
    """Microseconds of CPU per request that sealing adds, in this process: the client sealing a body to
    `candidates` keys, one worker opening it, sealing an answer of `chunks` chunks and its end, and the client
    opening them."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    keys = [SealKey(X25519PrivateKey.generate()) for _ in range(candidates)]
    body = json.dumps({"model": "fake-model", "stream": True, "max_tokens": chunks,
                       "messages": [{"role": "user", "content": "benchmark prompt"}]}).encode()
    chunk = b"x" * CHUNK_BYTES
    parts = {"seal_request": 0.0, "open_request": 0.0, "answer": 0.0}
    for _ in range(rounds):
        t0 = time.process_time()
        sealed = seal_request(body, [k.public_key for k in keys], b"envelope")
        t1 = time.process_time()
        opened = keys[0].open(sealed.sealed, b"envelope")
        t2 = time.process_time()
        opener = sealed.answer(keys[0].key_id)
        for _ in range(chunks):
            opener.open(opened.answer.seal(chunk))
        opener.end(opened.answer.end())
        t3 = time.process_time()
        parts["seal_request"] += t1 - t0
        parts["open_request"] += t2 - t1
        parts["answer"] += t3 - t2
    per = {name: round(total * 1e6 / rounds, 1) for name, total in parts.items()}
    return {"candidates": candidates, **{f"{name}_us": v for name, v in per.items()},
            "total_us": round(sum(per.values()), 1)}


# Ed25519 operations of one answered request: the proxy signs the client's charge voucher, the worker's payout
# voucher and its countersignature of the receipt, the worker its receipt; the proxy checks the worker's receipt,
# the worker its payout voucher, the client its charge voucher and the receipt's two signatures
ED25519_SIGNS = 4
ED25519_VERIFIES = 5
GOAL_RATIO = 0.5  # issue 12: the network at half the engine's rate


def crypto_floor(hpke: dict[str, float], rounds: int = 300) -> dict[str, float]:
    """Microseconds of CPU per sealed request that its cryptography costs alone, in this process: the nine Ed25519
    operations (libsodium, as the nodes use it) and the HPKE figures of `hpke_cost`."""
    from nacl.signing import SigningKey

    key = SigningKey.generate()
    message = bytes(32)
    signature = key.sign(message).signature
    t0 = time.process_time()
    for _ in range(rounds):
        key.sign(message)
    t1 = time.process_time()
    for _ in range(rounds):
        key.verify_key.verify(message, signature)
    t2 = time.process_time()
    sign_us, verify_us = (t1 - t0) * 1e6 / rounds, (t2 - t1) * 1e6 / rounds
    ed25519 = ED25519_SIGNS * sign_us + ED25519_VERIFIES * verify_us
    return {"ed25519_sign_us": round(sign_us, 1), "ed25519_verify_us": round(verify_us, 1),
            "ed25519_us": round(ed25519, 1), "total_us": round(ed25519 + hpke["total_us"], 1)}


def budget(report: dict[str, Any]) -> dict[str, float]:
    """What the hops (client, proxy, workers) may spend per request for the network to reach GOAL_RATIO of the
    engine's rate on this machine, what they spent in the sealed run, and what the cryptography alone costs: the
    cores are saturated in both runs, so a rate is the cores' CPU divided by the CPU each request takes."""
    network = report["cpu_ms_per_request"]["network"]
    hops = sum(v for role, v in network.items() if role.split("-")[0] in HOPS)
    others = network["total"] - hops  # the engine, the load generator, the devnet: the same work at any rate
    available = report["machine"]["cores"] * 1000 / (GOAL_RATIO * report["direct_rps"]) if report["direct_rps"] else 0
    return {"goal_ratio": GOAL_RATIO, "cpu_ms_per_request_at_goal": round(available, 3),
            "others_ms": round(others, 3), "hops_budget_ms": round(available - others, 3),
            "hops_ms": round(hops, 3), "crypto_floor_ms": round(report["crypto"]["total_us"] / 1000, 3)}


def run_bench(requests: int, concurrency: int, workers: int, as_json: bool,
              c1_requests: int = C1_REQUESTS, chunks: int = CHUNKS) -> dict[str, Any]:
    engine_port = free_port()
    engine = subprocess.Popen(
        [sys.executable, "-m", "cocoon", "engine", "fake", "--port", str(engine_port),
         "-o", f"reply_tokens={chunks}", "-o", f"token_bytes={CHUNK_BYTES}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    engine_url = f"http://127.0.0.1:{engine_port}/v1"
    net: LocalNet | None = None
    try:
        _wait_http(engine_url + "/models", 30)
        warm = max(concurrency, requests // 20)
        console.print(f"direct: {requests} streamed requests at concurrency {concurrency} → {engine_url}")
        asyncio.run(run_load(engine_url, "fake-model", warm, concurrency, chunks))
        # the load generator is this process: its CPU is the HTTP client's share of each request
        direct_pids = {"loadgen": os.getpid(), "engine": engine.pid}
        direct, direct_cpu = measured(engine_url, requests, concurrency, direct_pids, chunks)
        direct1, direct1_cpu = measured(engine_url, c1_requests, 1, direct_pids, chunks)
        with tempfile.TemporaryDirectory(prefix="cocoon-bench-") as state:
            net = LocalNet(Path(state), workers=workers, engine=f"openai:{engine_url}", port=free_port(),
                           engine_options={}, max_active=concurrency)
            plain_client = net.add_client("client-plain", free_port(), seal_requests=False)
            net.start(timeout_s=60)
            api = net.client.api_url or ""
            console.print(f"network: same load through client→proxy→{workers} worker(s)→engine at {api}")
            asyncio.run(run_load(api, "fake-model", warm, concurrency, chunks))
            # in the order a request crosses them
            nodes = sorted((n for n in net.nodes if n.proc), key=lambda n: (HOPS.index(n.role), n.name))
            pids = {"loadgen": os.getpid(), **{n.name: n.proc.pid for n in nodes if n.proc and n is not plain_client},
                    "engine": engine.pid}
            if net.chain_proc is not None:  # the devnet shares the cores: its share of the run shows too
                pids["chain"] = net.chain_proc.pid
            network, network_cpu = measured(api, requests, concurrency, pids, chunks)
            network1, network1_cpu = measured(api, c1_requests, 1, pids, chunks)
            with urllib.request.urlopen(net.client.stats_url + "/jsonstats", timeout=5) as resp:
                client = json.loads(resp.read())
            plain_api = plain_client.api_url or ""
            console.print(f"plain: the same load through a client that does not seal, at {plain_api}")
            assert plain_client.proc is not None
            plain_pids = {**{k: v for k, v in pids.items() if k != net.client.name},
                          net.client.name: plain_client.proc.pid}  # under the sealed client's name: same columns
            asyncio.run(run_load(plain_api, "fake-model", warm, concurrency, chunks))
            plain, plain_cpu = measured(plain_api, requests, concurrency, plain_pids, chunks)
            plain1, plain1_cpu = measured(plain_api, c1_requests, 1, plain_pids, chunks)
            net.stop()
            net = None
    finally:
        if net is not None:
            net.stop()
        engine.terminate()
        engine.wait(10)
    report = {
        "requests": requests, "concurrency": concurrency, "workers": workers,
        "chunks_per_answer": chunks, "chunk_bytes": CHUNK_BYTES,
        "direct_rps": round(direct.rps, 1), "network_rps": round(network.rps, 1),
        "ratio": round(network.rps / direct.rps, 3) if direct.rps else None,
        "direct_p50_ms": direct.p50(direct.latencies_ms),
        "direct_p99_ms": round(direct.pct(direct.latencies_ms, 0.99), 2),
        "network_p50_ms": network.p50(network.latencies_ms),
        "network_p99_ms": round(network.pct(network.latencies_ms, 0.99), 2),
        "direct_ttfb_p50_ms": direct.p50(direct.ttfb_ms),
        "network_ttfb_p50_ms": network.p50(network.ttfb_ms),
        "direct_errors": direct.errors, "network_errors": network.errors,
        # the network run is sealed end to end; the same network through a client configured plain:
        "plain_rps": round(plain.rps, 1), "plain_p50_ms": plain.p50(plain.latencies_ms),
        "plain_c1_p50_ms": plain1.p50(plain1.latencies_ms), "plain_errors": plain.errors + plain1.errors,
        "sealed_ratio": round(network.rps / plain.rps, 3) if plain.rps else None,
        "hpke": (hpke := hpke_cost(net_candidates(workers), chunks=chunks)),
        "crypto": crypto_floor(hpke),
        "client_payments": {k: client.get(k) for k in PAYMENT_FIGURES},
        "c1_requests": c1_requests,
        "direct_c1_p50_ms": direct1.p50(direct1.latencies_ms),
        "network_c1_p50_ms": network1.p50(network1.latencies_ms),
        "direct_c1_ttfb_p50_ms": direct1.p50(direct1.ttfb_ms),
        "network_c1_ttfb_p50_ms": network1.p50(network1.ttfb_ms),
        "direct_c1_headers_p50_ms": direct1.p50(direct1.headers_ms),
        "network_c1_headers_p50_ms": network1.p50(network1.headers_ms),
        "plain_c1_headers_p50_ms": plain1.p50(plain1.headers_ms),
        # until the head: the client from the request's parsing, the proxy from routing, the worker from the request
        "plain_c1_hops_p50_ms": {hop: plain1.p50(plain1.hops_ms[hop]) for hop in HOPS},
        "direct_c1_errors": direct1.errors, "network_c1_errors": network1.errors,
        # per process role, over each measured phase (loadgen: this process, the benchmark's HTTP client)
        "cpu_ms_per_request": {"direct": direct_cpu, "network": network_cpu,
                               "direct_c1": direct1_cpu, "network_c1": network1_cpu,
                               "plain": plain_cpu, "plain_c1": plain1_cpu},
        "machine": machine(),
    }
    report["budget"] = budget(report)
    if not as_json:
        _print(report, direct, network)
    return report


def net_candidates(workers: int) -> int:
    """How many workers each of the benchmark's sealed requests is sealed to (the client's default, at most every
    worker)."""
    from cocoon.config import ClientConfig

    return min(workers, ClientConfig(name="bench").seal_candidates)


def _print(report: dict[str, Any], direct: LoadResult, network: LoadResult) -> None:
    table = Table(title=f"{report['requests']} streamed requests, concurrency {report['concurrency']}, "
                        f"{report['chunks_per_answer']}×{CHUNK_BYTES} B per answer")
    for col in ("path", "req/s", "p50 ms", "p99 ms", "ttfb p50 ms", "ttfb p99 ms", "errors"):
        table.add_column(col, justify="right")
    for name, r in (("direct", direct), ("network", network)):
        table.add_row(name, f"{r.rps:.1f}", f"{r.pct(r.latencies_ms, 0.5):.2f}", f"{r.pct(r.latencies_ms, 0.99):.2f}",
                      f"{r.pct(r.ttfb_ms, 0.5):.2f}", f"{r.pct(r.ttfb_ms, 0.99):.2f}", str(r.errors))
    Console().print(table)
    slowdown = report["network_p50_ms"] / report["direct_p50_ms"] if report["direct_p50_ms"] else float("nan")
    Console().print(f"ratio network/direct (req/s): [bold]{report['ratio']}[/]   median latency ×{slowdown:.2f}")
    Console().print("client payments: " + ", ".join(f"{k} {v}" for k, v in report["client_payments"].items()))
    Console().print(markdown(report))


README_BEGIN = "<!-- bench:begin (written by `make bench`: cocoon bench --readme; do not edit by hand) -->"
README_END = "<!-- bench:end -->"


RUN_FIGURES = ("direct_rps", "network_rps", "ratio", "plain_rps", "sealed_ratio", "direct_c1_p50_ms",
               "network_c1_p50_ms", "plain_c1_p50_ms", "direct_c1_headers_p50_ms", "network_c1_headers_p50_ms")


def run_summary(report: dict[str, Any]) -> dict[str, Any]:
    """One run's headline figures, kept for every run of `cocoon bench --runs N`."""
    cpu = report["cpu_ms_per_request"]
    return {**{k: report[k] for k in RUN_FIGURES}, "network_cpu_ms": cpu["network"]["total"],
            "plain_cpu_ms": cpu["plain"]["total"], "direct_cpu_ms": cpu["direct"]["total"]}


def runs_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["| run | direct req/s | network req/s | ratio | plain req/s | sealed/plain | added c1 p50 ms sealed / "
             "plain | c1 headers ms network / direct | CPU ms/req direct / plain / sealed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {r['direct_rps']} | {r['network_rps']} | {r['ratio']} | {r['plain_rps']} | {r['sealed_ratio']} | "
            f"{r['network_c1_p50_ms'] - r['direct_c1_p50_ms']:.2f} / {r['plain_c1_p50_ms'] - r['direct_c1_p50_ms']:.2f}"
            f" | {r['network_c1_headers_p50_ms']} / {r['direct_c1_headers_p50_ms']} | {r['direct_cpu_ms']} / "
            f"{r['plain_cpu_ms']} / {r['network_cpu_ms']} |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The report as the README's benchmark figures: the machine, every run's headline figures (`--runs`), then
    the last run's rates and latencies and CPU ms per request."""
    m = report["machine"]
    cpu = report["cpu_ms_per_request"]
    roles = list(cpu["network"])
    runs = report.get("all_runs", [])
    lines = [
        f"Machine: {m['cores']} cores, {m['cpu_model']}; engine, load generator and every node on it. "
        f"{report['requests']} streamed requests at concurrency {report['concurrency']}, then "
        f"{report['c1_requests']} at concurrency 1; {report['chunks_per_answer']}×{report['chunk_bytes']} B per "
        f"answer, {report['workers']} workers.",
        "",
    ]
    if len(runs) > 1:
        lines += [f"{len(runs)} consecutive runs, every one shown (the details below are of the last):", "",
                  *runs_table(runs), ""]
    lines += [
        "| path | req/s | p50 ms | p99 ms | ttfb p50 ms | c1 p50 ms | c1 ttfb p50 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in ("direct", "network"):
        lines.append(f"| {path} | {report[f'{path}_rps']} | {report[f'{path}_p50_ms']} | "
                     f"{report[f'{path}_p99_ms']} | {report[f'{path}_ttfb_p50_ms']} | "
                     f"{report[f'{path}_c1_p50_ms']} | {report[f'{path}_c1_ttfb_p50_ms']} | "
                     f"{report[f'{path}_errors'] + report[f'{path}_c1_errors']} |")
    added = report["network_c1_p50_ms"] - report["direct_c1_p50_ms"]
    hops = report["plain_c1_hops_p50_ms"]
    hpke = report["hpke"]
    sealing = report["network_c1_p50_ms"] - report["plain_c1_p50_ms"]
    lines += ["", f"ratio network/direct (req/s): **{report['ratio']}**; added at concurrency 1: "
                  f"**{added:.2f} ms** p50.", "",
              f"At concurrency 1 the answer's headers (the request's way to the engine, the head's way back) arrive "
              f"after {report['network_c1_headers_p50_ms']} ms sealed, {report['plain_c1_headers_p50_ms']} ms plain "
              f"and {report['direct_c1_headers_p50_ms']} ms direct (p50): most of what the hops add is on the "
              f"request's way, not in relaying its {report['chunks_per_answer']} chunks. Until the head (plain, "
              f"p50, from cocoon's timing headers): the client {hops['client']} ms from the request's parsing, the "
              f"proxy {hops['proxy']} ms from routing it, the worker {hops['worker']} ms from taking it (the "
              f"engine's part included).", "",
              f"The network run is sealed end to end; through a client configured plain the same network gave "
              f"{report['plain_rps']} req/s (p50 {report['plain_p50_ms']} ms, at concurrency 1 "
              f"{report['plain_c1_p50_ms']} ms): sealed/plain **{report['sealed_ratio']}**, {sealing:+.2f} ms at "
              f"concurrency 1. HPKE and the sealed chunks cost {hpke['total_us']} µs of CPU per request "
              f"(sealing to {hpke['candidates']} workers {hpke['seal_request_us']} µs, opening "
              f"{hpke['open_request_us']} µs, {report['chunks_per_answer']} chunks sealed and opened "
              f"{hpke['answer_us']} µs).", "",
              *budget_lines(report), "",
              "CPU ms per request (user+system, from /proc, over each measured phase):", "",
              "| phase | " + " | ".join(roles) + " |", "|---|" + "---|" * len(roles)]
    for phase, per in cpu.items():
        lines.append(f"| {phase} | " + " | ".join(str(per.get(r, "")) for r in roles) + " |")
    return "\n".join(lines)


def budget_lines(report: dict[str, Any]) -> list[str]:
    b, crypto = report["budget"], report["crypto"]
    return [f"For a ratio of {b['goal_ratio']} on this machine a request could take {b['cpu_ms_per_request_at_goal']} "
            f"ms of CPU in all; the engine, the load generator and the devnet take {b['others_ms']} ms of it, which "
            f"leaves the client, the proxy and the workers **{b['hops_budget_ms']} ms** together. They took "
            f"**{b['hops_ms']} ms** in the sealed run; the cryptography a sealed request must do costs "
            f"**{b['crypto_floor_ms']} ms** of it alone (HPKE {report['hpke']['total_us']} µs; "
            f"{ED25519_SIGNS} Ed25519 signatures at {crypto['ed25519_sign_us']} µs and {ED25519_VERIFIES} checks at "
            f"{crypto['ed25519_verify_us']} µs)."]


def update_readme(path: Path, report: dict[str, Any]) -> None:
    """Replace the figures between the README's bench markers with this report's."""
    text = path.read_text()
    head, sep, rest = text.partition(README_BEGIN)
    _, sep2, tail = rest.partition(README_END)
    if not sep or not sep2:
        raise ValueError(f"{path} has no {README_BEGIN!r} … {README_END!r} block")
    path.write_text(f"{head}{README_BEGIN}\n{markdown(report)}\n{README_END}{tail}")
