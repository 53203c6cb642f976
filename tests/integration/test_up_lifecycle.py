"""`cocoon up` starts every role as its own process and stops all of them on SIGTERM or SIGINT."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.netutil import free_port, localnet, pid_alive


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_every_process(tmp_path: Path, sig: signal.Signals) -> None:
    with localnet(tmp_path / "state", engine="fake", workers=2) as net:
        pids = [p["pid"] for p in net.info["processes"]]
        assert len(set(pids)) == 4 and all(pid_alive(pid) for pid in pids)
        net.proc.send_signal(sig)
        assert net.proc.wait(30) == 0
        deadline = time.monotonic() + 5
        while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in pids if pid_alive(pid)] == []
        assert not (net.state_dir / "localnet.json").exists()


def test_up_reports_a_failing_start_and_leaves_nothing_behind(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cocoon", "up", "--engine", "openai:not-a-url", "--port", str(free_port()),
         "--state-dir", str(tmp_path / "state"), "--ready-timeout", "30"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert re.search(r"worker-\d exited", proc.stderr) and "http://" in proc.stderr
    assert not (tmp_path / "state" / "localnet.json").exists()
