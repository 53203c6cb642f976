"""`cocoon up --hosts` (hosts.py): the namespaces, veth pairs and bridge it creates are found and removed again,
also after a crashed run; without root it says so and exits 2."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cocoon import hosts
from cocoon.hosts import BRIDGE, HostNetwork, HostsUnavailable


def need_hosts() -> None:
    reason = hosts.unavailable_reason() or hosts.busy_reason()
    if reason:
        print(f"\nSKIPPED: {reason}", file=sys.__stderr__)  # said aloud, not only in pytest's skip summary
        pytest.skip(reason)


def project_links() -> list[str]:
    out = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0].split("@")[0] for line in out.splitlines()
            if line.startswith((BRIDGE, hosts.VETH_PREFIX))]


def test_hosts_reach_each_other_and_the_root_namespace_and_a_crashed_runs_are_removed_next_time() -> None:
    need_hosts()
    first = HostNetwork()
    a, b = first.plan("test-a"), first.plan("test-b")
    first.create()
    try:
        assert {"cocoon-test-a", "cocoon-test-b"} <= set(hosts.namespaces())
        server = subprocess.Popen(a.command([sys.executable, "-c", (
            "import socket; s = socket.create_server(('0.0.0.0', 7000)); print('up', flush=True)\n"
            "for _ in range(2):\n    c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()")]),
            stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "up"
            seen_from_b = subprocess.run(b.command([sys.executable, "-c", (
                f"import socket; print(socket.create_connection(('{a.address}', 7000), timeout=5).recv(64).decode())"
            )]), capture_output=True, text=True, timeout=30).stdout.strip()
            assert seen_from_b == b.address  # host to host, each with its own address
            with socket.create_connection((a.address, 7000), timeout=5) as conn:  # from the root namespace
                assert conn.recv(64).decode() == first.gateway
        finally:
            server.kill()
            server.wait()
        # a second run while the first holds them is refused, naming the holder
        with pytest.raises(HostsUnavailable, match=f"pid {os.getpid()}"):
            other = HostNetwork()
            other.plan("test-c")
            other.create()
        # the first run "crashes": its lock goes, its namespaces and links stay
        assert first._lock is not None
        first._lock.close()
        first._lock = None
        assert set(project_links()) >= {BRIDGE, "cocoon-v0", "cocoon-v1"}
        second = HostNetwork()
        second.plan("test-a")
        second.create()  # removes the crashed run's, then makes its own
        try:
            assert hosts.namespaces() == ["cocoon-test-a"]
        finally:
            second.destroy()
        assert hosts.namespaces() == [] and project_links() == []
    finally:
        first.destroy()
        hosts.clean_if_unused()


def test_without_root_cocoon_up_hosts_says_so_and_exits_2(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        reason = "needs root and setpriv to run cocoon up as an unprivileged user"
        print(f"\nSKIPPED: {reason}", file=sys.__stderr__)
        pytest.skip(reason)
    state = tmp_path / "state"
    tmp_path.chmod(0o777)
    done = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                           "cocoon", "up", "--hosts", "--engine", "fake", "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "run it as root" in done.stdout + done.stderr
    assert not state.exists()  # nothing was started or written
