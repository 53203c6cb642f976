"""Starting and stopping real `cocoon up` networks for tests (127.0.0.1 only, bounded waits)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BLOCK_S = 0.1  # the devnet's block interval in tests: a chain operation takes a few blocks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def log_records(text: str) -> list[dict[str, Any]]:
    """The JSON lines of a process's log (its structured records), whatever spacing the writer uses."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is gone for our purposes
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Ask a process to stop, then kill it if it has not within `timeout`."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Net:
    proc: subprocess.Popen[bytes]
    state_dir: Path
    info: dict[str, Any]
    port: int

    @property
    def api_url(self) -> str:
        return self.info["api_url"]

    def node(self, name: str) -> dict[str, Any]:
        return next(p for p in self.info["processes"] if p["name"] == name)

    def stats(self, name: str) -> dict[str, Any]:
        return get_json(self.node(name)["stats_url"] + "/jsonstats")

    def by_role(self, role: str) -> list[dict[str, Any]]:
        return [p for p in self.info["processes"] if p["role"] == role]

    @property
    def chain(self) -> dict[str, Any]:
        """The devnet (`url`, `api`, `root`, `pid`) as localnet.json describes it."""
        return self.info["chain"]

    def node_dir(self, name: str) -> Path:
        """Node `name`'s own state directory."""
        return self.state_dir / name

    def sdk(self, timeout: float = 120.0) -> Any:
        """The official OpenAI SDK pointed at this network's client API (no retries: tests see every error)."""
        import openai

        return openai.OpenAI(base_url=self.api_url, api_key="any", max_retries=0, timeout=timeout)


@contextlib.contextmanager
def localnet(state_dir: Path, *, engine: str = "fake", workers: int = 2, options: tuple[str, ...] = (),
             max_active: int | None = 4, ready_s: float = 180.0, port_range: tuple[int, int] | None = None,
             relay: bool = False) -> Iterator[Net]:
    """`max_active` None: cocoon up's default; `port_range`: every port from it (the API's too); `relay`: the
    client's requests go through a relay (`cocoon up --relay`)."""
    port = free_port() if port_range is None else 0
    cmd = [sys.executable, "-m", "cocoon", "up", "--engine", engine, "--workers", str(workers),
           "--state-dir", str(state_dir), "--ready-timeout", str(ready_s), "--block-interval", str(BLOCK_S)]
    cmd += ["--port", str(port)] if port_range is None else ["--port-range", f"{port_range[0]}-{port_range[1]}"]
    if max_active is not None:
        cmd += ["--max-active", str(max_active)]
    for opt in options:
        cmd += ["--engine-option", opt]
    if relay:
        cmd.append("--relay")
    out = (state_dir.parent / f"{state_dir.name}-up.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    info: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + ready_s + 10
        path = state_dir / "localnet.json"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"cocoon up exited early ({proc.returncode}):\n"
                                   + (state_dir.parent / f"{state_dir.name}-up.log").read_text()[-3000:])
            if path.exists():
                info = json.loads(path.read_text())
                # until `ready`, cocoon up takes a process's exit for a failed start and stops the network
                with contextlib.suppress(OSError, ValueError):
                    if not info.get("ready"):
                        raise ValueError("not ready")
                    models = get_json(info["api_url"] + "/models")["data"]
                    if models and sum(m["workers"] for m in models) >= workers:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError("local network not ready in time")
            time.sleep(0.2)
        yield Net(proc, state_dir, info, port or urlsplit(info["api_url"]).port or 0)
    finally:
        pids = [p["pid"] for p in [*info.get("processes", []), info.get("chain") or {}] if p.get("pid")]
        stop_process(proc, signal.SIGINT)
        for pid in pids:  # belt and braces: nothing a test started may outlive it
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        out.close()


def transcode_with_curl(api_url: str, path: Path, out: Path, **fields: str) -> tuple[int, dict[str, str], bytes]:
    """POST /v1/media/transcode with curl as the README does it (`api_url` ends in /v1): status, headers, body (the
    output, or the error)."""
    cmd = ["curl", "-sS", "-D", "-", "-o", str(out), "-F", f"file=@{path}"]
    for name, value in fields.items():
        cmd += ["-F", f"{name}={value}"]
    done = subprocess.run([*cmd, api_url + "/media/transcode"], capture_output=True, timeout=120, check=True)
    blocks = [b for b in done.stdout.decode().split("\r\n\r\n") if b.strip()]
    lines = blocks[-1].split("\r\n")  # after any `100 Continue` (curl asks for one before a large upload)
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if ":" in line)}
    return status, headers, out.read_bytes()


@contextlib.contextmanager
def serving(args: list[str], port: int, log_path: Path, *, within_s: float) -> Iterator[subprocess.Popen[bytes]]:
    """The process `args`, once it accepts connections on 127.0.0.1:`port` (within `within_s`), its output in
    `log_path` (a file, not a pipe: a full pipe would block a server that logs a lot); stopped on leaving."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + within_s
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{log_path.stem} exited: {log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{log_path.stem} did not start within {within_s:.0f} s: "
                                   f"{log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        stop_process(proc, timeout=10)


@contextlib.contextmanager
def llama_cpp_server(log_dir: Path) -> Iterator[str]:
    """llama-cpp-python's own OpenAI server (a real third-party engine) on the bundled model."""
    from cocoon.inference.embedded import MODEL_ID, default_model_path

    port = free_port()
    args = [sys.executable, "-m", "llama_cpp.server", "--model", default_model_path(), "--model_alias", MODEL_ID,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--verbose", "false"]
    with serving(args, port, log_dir / "llama_server.log", within_s=60):
        yield f"http://127.0.0.1:{port}/v1"


@contextlib.contextmanager
def devnet(state: Path, *, block_s: float = 0.1, owner_key: bytes | None = None, ready_s: float = 30.0
           ) -> Iterator[dict[str, Any]]:
    """`cocoon chain serve` on `state` (its own directory) until the block ends: its /devnet/info, with `url` and
    `api` (the toncenter-v2 base URL)."""
    port = free_port()
    cmd = [sys.executable, "-m", "cocoon", "chain", "serve", "--state-dir", str(state), "--port", str(port),
           "--block-interval", str(block_s)]
    if owner_key is not None:
        cmd += ["--owner-key", owner_key.hex()]
    log_path = state.parent / f"{state.name}-serve.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the devnet exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
            try:
                info = get_json(f"{url}/devnet/info")["result"]
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the devnet did not listen within {ready_s:.0f} s") from None
                time.sleep(0.1)
        yield {"url": url, "api": f"{url}/api/v2", **info}
    finally:
        stop_process(proc)


# ---- the devnet, as a test reads it: over its HTTP API only ----
def chain_ledger(chain: dict[str, Any]) -> Any:
    """A `ton` ledger over the devnet's toncenter-v2 API (`chain`: localnet.json's "chain", or /devnet/info with
    `api`); close it after use."""
    from cocoon.ledger.ton import TonLedger
    from cocoon.ledger.toncenter import ToncenterTransport

    return TonLedger(chain["root"], ToncenterTransport(chain["api"], poll_s=0.05), sync_s=3600)


def devnet_call(chain: dict[str, Any], method: str, body: dict[str, Any] | None = None) -> Any:
    from cocoon.ledger.devnet import devnet_call as call

    return call(chain["url"], method, body)


def balanced(chain: dict[str, Any]) -> bool:
    """Every coin the devnet minted is in a balance or was paid as a fee (its audit)."""
    return bool(devnet_call(chain, "audit")["balanced"])


def last_lt(chain: dict[str, Any], address: str) -> int:
    """The logical time of the account's last transaction (0: none)."""
    info = get_json(f"{chain['api']}/getAddressInformation?address={address}", timeout=10)["result"]
    return int(info["last_transaction_id"]["lt"])


def transactions_since(chain: dict[str, Any], address: str, since_lt: int) -> list[dict[str, Any]]:
    """The account's transactions after `since_lt`, as the API shows them (`fee`, `storage_fee`: strings)."""
    items = get_json(f"{chain['api']}/getTransactions?address={address}&limit=100&to_lt={since_lt}",
                     timeout=10)["result"]
    return [t for t in items if int(t["transaction_id"]["lt"]) > since_lt]


def owner_wallet(state_dir: Path) -> Any:
    """The standard wallet that owns a `cocoon up` devnet's root registry (its key in STATE_DIR/owner.key)."""
    from cocoon.ledger.ton import wallet_v4r2_address
    from cocoon.ledger.wallet import Wallet

    seed = (state_dir / "owner.key").read_bytes()
    return Wallet(seed, wallet_v4r2_address(Wallet(seed).public_key))
