"""Role processes started one by one from config files, for attacks that need a node configured on purpose."""

from __future__ import annotations

import contextlib
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.netutil import get_json, stop_process


@contextlib.contextmanager
def role_process(role: str, config: Path, log: Path, *, max_open_files: int | None = None
                 ) -> Iterator[subprocess.Popen[bytes]]:
    """`cocoon ROLE --config CONFIG`, its output in `log`; stopped (then killed) on exit. `max_open_files` lowers
    the process's file descriptor limit (RLIMIT_NOFILE), to reach resource exhaustion with few connections."""

    def limit() -> None:
        if max_open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_open_files, max_open_files))

    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cocoon", role, "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=limit if max_open_files is not None else None)
    try:
        yield proc
    finally:
        stop_process(proc, signal.SIGTERM, timeout=15)


def wait_stats(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> dict[str, Any]:
    """The process's /jsonstats once it answers (bounded wait; the log's tail if it died)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError, ValueError):
            return get_json(f"http://127.0.0.1:{port}/jsonstats")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no stats within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
