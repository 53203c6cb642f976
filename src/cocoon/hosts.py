"""`cocoon up --hosts`: each process on a host of its own, as Linux network namespaces on a private bridge.

Every namespace gets one veth pair, its end named `eth0` inside with one address of `RANGE`; the other end joins
the bridge `BRIDGE`, which holds the range's first address in the root namespace, so a process left there (the
client, `cocoon up` itself) reaches every host, and the hosts reach each other, over the bridge.

What is created carries the project's names (`cocoon-…`), so it can be found again: stopping removes it all, and
the next start removes what a crashed run left. One `--hosts` network runs at a time on a machine (the range is
one): a lock file held for the run's life says whether another live run owns them. The range is checked unused
(no address or route of the machine overlaps it) before anything is created.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO

RANGE = ipaddress.ip_network("10.213.0.0/24")  # the project's; checked unused on this machine
BRIDGE = "cocoon-br0"
NETNS_PREFIX = "cocoon-"
VETH_PREFIX = "cocoon-v"  # host ends: cocoon-v<N> (interface names are at most 15 bytes)
LOCK_FILE = Path("/run/cocoon-hosts.lock")
FIRST_HOST = 10  # host addresses start at RANGE[10]; RANGE[1] is the bridge's


class HostsUnavailable(RuntimeError):
    """Namespaces cannot be created here; the message says why."""


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    address: str
    veth: str

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        raise HostsUnavailable("the `ip` command (iproute2) is not installed") from None
    if check and done.returncode != 0:
        raise HostsUnavailable(f"ip {' '.join(args)} failed: {done.stderr.strip() or done.returncode}")
    return done


def unavailable_reason() -> str | None:
    """Why this process cannot create the hosts, or None when it can (root, with iproute2)."""
    if os.geteuid() != 0:
        return "cocoon up --hosts creates network namespaces, veth pairs and a bridge: run it as root"
    try:
        _ip("netns", "list")
    except HostsUnavailable as exc:
        return str(exc)
    return None


def namespaces() -> list[str]:
    """This project's namespaces on the machine (from any run)."""
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(NETNS_PREFIX)]


def _links() -> list[dict[str, object]]:
    return json.loads(_ip("-j", "link", "show").stdout or "[]")


def busy_reason() -> str | None:
    """Why another run's hosts are in the way (its pid), or None when no live run holds them."""
    with LOCK_FILE.open("a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().decode(errors="replace").strip() or "?"
            return (f"another cocoon up --hosts (pid {holder}) runs on this machine: its namespaces and range "
                    f"({RANGE}) are in use")
    return None


def clean_if_unused() -> list[str]:
    """`clean`, unless a live run holds the hosts (its lock): what a crashed run left, removed."""
    with LOCK_FILE.open("a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []
        return clean()


def clean() -> list[str]:
    """Remove every namespace, veth and bridge of this project (a crashed run's); what was removed."""
    removed = []
    for ns in namespaces():
        _ip("netns", "delete", ns, check=False)
        removed.append(f"netns {ns}")
    for link in _links():
        name = str(link.get("ifname", ""))
        if name == BRIDGE or name.startswith(VETH_PREFIX):
            _ip("link", "delete", name, check=False)
            removed.append(f"link {name}")
    return removed


def check_range_unused() -> None:
    """HostsUnavailable if an address or route of this machine (our bridge's aside) overlaps RANGE."""
    for iface in json.loads(_ip("-j", "addr", "show").stdout or "[]"):
        if iface.get("ifname") == BRIDGE:
            continue
        for addr in iface.get("addr_info", []):
            if addr.get("family") != "inet":
                continue
            net = ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False)
            if net.overlaps(RANGE):
                raise HostsUnavailable(f"address {addr['local']}/{addr['prefixlen']} on {iface['ifname']} overlaps "
                                       f"the range cocoon up --hosts uses ({RANGE}): it will not share it")
    for route in json.loads(_ip("-j", "route", "show").stdout or "[]"):
        dst = route.get("dst", "")
        if dst in ("", "default") or route.get("dev") == BRIDGE:
            continue
        with contextlib.suppress(ValueError):
            if ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False).overlaps(RANGE):
                raise HostsUnavailable(f"route {dst} (dev {route.get('dev')}) overlaps the range cocoon up --hosts "
                                       f"uses ({RANGE})")


class HostNetwork:
    """The hosts of one run: created by `create`, all removed by `destroy` (also called after a failed create)."""

    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}
        self._lock: IO[bytes] | None = None

    @property
    def gateway(self) -> str:
        return str(RANGE[1])

    def plan(self, name: str) -> Host:
        """The host `name` will be (its namespace and address), created with the others by `create`."""
        i = len(self.hosts)
        if FIRST_HOST + i >= RANGE.num_addresses - 1:
            raise HostsUnavailable(f"more than {i} hosts do not fit in {RANGE}")
        host = Host(name, f"{NETNS_PREFIX}{name}", str(RANGE[FIRST_HOST + i]), f"{VETH_PREFIX}{i}")
        self.hosts[name] = host
        return host

    def create(self) -> None:
        """Create every planned host (and the bridge), after removing what a crashed run left."""
        reason = unavailable_reason()
        if reason:
            raise HostsUnavailable(reason)
        self._take_lock()
        try:
            left = clean()  # a crashed run's: the lock says no live run owns them
            if left:
                print(f"cocoon up --hosts: removed what an earlier run left: {', '.join(left)}")
            check_range_unused()
            _ip("link", "add", BRIDGE, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/{RANGE.prefixlen}", "dev", BRIDGE)
            _ip("link", "set", BRIDGE, "up")
            for i, host in enumerate(self.hosts.values()):
                self._create(i, host)
        except BaseException:
            self.destroy()
            raise

    def _create(self, i: int, host: Host) -> None:
        peer = f"cocoon-p{i}"
        _ip("netns", "add", host.netns)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", host.netns)
        _ip("-n", host.netns, "link", "set", peer, "name", "eth0")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/{RANGE.prefixlen}", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        _ip("-n", host.netns, "route", "add", "default", "via", self.gateway)
        _ip("link", "set", host.veth, "master", BRIDGE, "up")

    def _take_lock(self) -> None:
        lock = LOCK_FILE.open("a+b")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise HostsUnavailable(busy_reason() or f"another cocoon up --hosts holds {LOCK_FILE}") from None
        lock.truncate(0)
        lock.write(str(os.getpid()).encode())
        lock.flush()
        self._lock = lock

    def destroy(self) -> None:
        """Remove every namespace, link and bridge of this run (idempotent); nothing when this run did not take the
        hosts (another run holds them)."""
        if self._lock is None:
            return
        for host in self.hosts.values():
            _ip("netns", "delete", host.netns, check=False)
            _ip("link", "delete", host.veth, check=False)
        if any(link.get("ifname") == BRIDGE for link in _links()):
            _ip("link", "delete", BRIDGE, check=False)
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None
