"""Role processes started one by one from config files, for attacks that need a node configured on purpose."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.netutil import free_port, get_json, stop_process


def proxy_config(tmp_path: Path, port: int, stats: int, extra: str = "") -> Path:
    """A proxy's config file in `tmp_path` (its state dir) listening on `port`, stats on `stats`; `extra` is more
    TOML lines."""
    config = tmp_path / "proxy.toml"
    config.write_text(f'name = "proxy"\nstate_dir = "{tmp_path}"\nport = {port}\nstats_port = {stats}\n{extra}')
    return config


@contextlib.contextmanager
def role_process(role: str, config: Path, log: Path, *args: str, max_open_files: int | None = None,
                 script: Path | None = None, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`cocoon ROLE --config CONFIG` (or, with `args`, `cocoon ROLE ARGS…`), its output in `log`; stopped (then
    killed) on exit. `max_open_files` lowers the process's file descriptor limit (RLIMIT_NOFILE), to reach
    resource exhaustion with few connections. `script`: a Python file that runs the role its own way (an attacker's
    node), given the same arguments; `env`: more environment variables."""

    def limit() -> None:
        if max_open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_open_files, max_open_files))

    command = [*args] if args else ["--config", str(config)]
    with log.open("wb") as out:
        program = [str(script)] if script is not None else ["-m", "cocoon", role]
        proc = subprocess.Popen([sys.executable, *program, *command],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=limit if max_open_files is not None else None,
                                env={**os.environ, **env} if env else None)
    try:
        yield proc
    finally:
        stop_process(proc, signal.SIGTERM, timeout=15)


def stats(port: int) -> dict[str, Any] | None:
    """A process's /jsonstats, or None while it does not answer."""
    with contextlib.suppress(OSError, ValueError):
        return get_json(f"http://127.0.0.1:{port}/jsonstats")
    return None


def wait_until(ready: Callable[[], Any], procs: Sequence[tuple[subprocess.Popen[bytes], Path]], what: str,
               timeout: float = 60.0) -> Any:
    """`ready()`'s first true value (polled; bounded), failing with the logs' tails if a process died first."""
    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if value:
            return value
        for proc, log in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{log.stem} exited ({proc.returncode}) while waiting for {what}:\n"
                                   f"{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {log.stem}\n{log.read_text()[-2000:]}" for _, log in procs)
            raise RuntimeError(f"no {what} within {timeout:.0f} s:\n{tails}")
        time.sleep(0.2)


def wait_stats(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> dict[str, Any]:
    """The process's /jsonstats once it answers (bounded wait; the log's tail if it died)."""
    return wait_until(lambda: stats(port), [(proc, log)], f"stats on port {port}", timeout)


def toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def config(path: Path, **fields: Any) -> Path:
    """A role's TOML config file at `path` holding `fields`."""
    path.write_text("".join(f"{key} = {toml(value)}\n" for key, value in fields.items()))
    return path


def get_or_none(url: str) -> Any:
    try:
        return get_json(url)
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def tampering_network(tmp: Path) -> Iterator[tuple[Path, str, int, Path]]:
    """A client and a worker (fake engine, reply of 8 tokens, the media workload too) linked by the tampering proxy
    (tests/security/tampering_proxy.py), each a real process with its state in `tmp`, once the worker is linked:
    (`tmp`, the client's API URL, its stats port, the file whose content is the proxy's mode). Every process must
    still run at the end."""
    mode_file = tmp / "tamper-mode"
    proxy_port, api_port, client_stats = free_port(), free_port(), free_port()
    proxy_cfg = config(tmp / "proxy.toml", name="proxy", state_dir=str(tmp), port=proxy_port,
                       stats_port=free_port())
    worker_cfg = config(tmp / "worker.toml", name="worker", state_dir=str(tmp), proxy=f"127.0.0.1:{proxy_port}",
                        engine="fake", engine_options={"reply_tokens": 8}, stats_port=free_port())
    client_cfg = config(tmp / "client.toml", name="client", state_dir=str(tmp), proxy=f"127.0.0.1:{proxy_port}",
                        api_port=api_port, stats_port=client_stats)
    tamperer = Path(__file__).with_name("tampering_proxy.py")
    with role_process("proxy", proxy_cfg, tmp / "proxy.log", script=tamperer,
                      env={"COCOON_TAMPER_FILE": str(mode_file)}) as proxy, \
            role_process("worker", worker_cfg, tmp / "worker.log") as worker, \
            role_process("client", client_cfg, tmp / "client.log") as client:
        api = f"http://127.0.0.1:{api_port}/v1"
        procs = [(proxy, tmp / "proxy.log"), (worker, tmp / "worker.log"), (client, tmp / "client.log")]
        wait_until(lambda: any(m["workers"] for m in (get_or_none(api + "/models") or {"data": []})["data"]),
                   procs, "a worker behind the tampering proxy")
        yield tmp, api, client_stats, mode_file
        assert all(p.poll() is None for p, _ in procs), "a process crashed"
