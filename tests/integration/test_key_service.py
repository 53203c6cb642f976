"""The key service (`cocoon keys`) between real processes: a node gets the same key after a restart and from a
second instance holding the same master (replicated, or restored from the operator's backup); a node whose image
the registry does not allow is refused with the reason in its own log; a peer asking for another role's keys is
refused."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cocoon.attest.backends import get_backend
from cocoon.attest.fake import fake_image_hash
from cocoon.attest.policy import load_policy
from cocoon.config import KeysConfig, WorkerConfig, dump_config
from cocoon.keyclient import KeyRefused, KeyRequest, encode, receive
from cocoon.ledger.local import LocalLedger
from cocoon.ratls import tls
from cocoon.ratls.cert import CertVerifier, make_identity
from tests.netutil import free_port, get_json, log_records, stop_process

WORKER_IMAGE = "cocoon-worker-dev"


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cocoon", *args], stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_json(url: str, proc: subprocess.Popen[bytes], log: Path, within_s: float = 30.0) -> dict:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return get_json(url)
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in {within_s}s:\n{log.read_text()[-3000:]}")


def registry(state: Path) -> None:
    """The chain the key service reads its registry from: it allows the worker image only."""
    state.mkdir(parents=True, exist_ok=True)
    ledger = LocalLedger(state / "ledger.sqlite")
    ledger.set_allowed_images("worker", [fake_image_hash(WORKER_IMAGE)])
    ledger.close()


class KeyServices:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []
        self.configs: dict[str, KeysConfig] = {}

    def config(self, name: str, **fields: object) -> tuple[Path, KeysConfig]:
        state = self.root / name
        registry(state)
        cfg = KeysConfig(name=name, state_dir=str(state), port=free_port(), stats_port=free_port(),
                         image="cocoon-keys-dev", **fields)  # type: ignore[arg-type]
        path = self.root / f"{name}.toml"
        path.write_text(dump_config(cfg))
        self.configs[name] = cfg
        return path, cfg

    def start(self, path: Path, cfg: KeysConfig) -> str:
        log = self.root / f"{cfg.name}.log"
        proc = spawn(["keys", "--config", str(path)], log)
        self.procs.append(proc)
        stats = wait_json(f"http://127.0.0.1:{cfg.stats_port}/jsonstats", proc, log)
        assert stats["image_hash"] == fake_image_hash("cocoon-keys-dev").hex()
        return f"127.0.0.1:{cfg.port}"

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_process(proc)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[KeyServices]:
    ks = KeyServices(tmp_path)
    try:
        yield ks
    finally:
        ks.stop_all()


def worker_key(root: Path, key_service: str, *, name: str = "worker-1", machine: str = "a") -> str:
    """Start a worker (fake engine, its proxy absent) that takes its keys from `key_service`, with the state dir of
    `machine`; its RA-TLS key."""
    cfg = WorkerConfig(name=name, state_dir=str(root / f"machine-{machine}"), engine="fake", image=WORKER_IMAGE,
                       proxy=f"127.0.0.1:{free_port()}", stats_port=free_port(), key_service=key_service)
    path = root / f"{name}.toml"
    path.write_text(dump_config(cfg))
    log = root / f"{name}.log"
    proc = spawn(["worker", "--config", str(path)], log)
    try:
        return wait_json(f"http://127.0.0.1:{cfg.stats_port}/jsonstats", proc, log)["identity"]["key"]
    finally:
        stop_process(proc)


def test_a_node_gets_the_same_key_after_restarts_and_from_another_instance(services: KeyServices,
                                                                           tmp_path: Path) -> None:
    recovery = tmp_path / "recovery.key"
    public = subprocess.run([sys.executable, "-m", "cocoon", "keys", "recovery-key", "--out", str(recovery)],
                            capture_output=True, text=True, check=True).stdout.strip()
    first_path, first_cfg = services.config("keys-1", recovery_public_key=public)
    first = services.start(first_path, first_cfg)
    key = worker_key(tmp_path, first)
    assert worker_key(tmp_path, first) == key  # a restart
    assert worker_key(tmp_path, first, machine="b") == key  # moved to another machine: nothing of it kept
    assert worker_key(tmp_path, first, name="worker-2") != key  # another name, another key
    # a second instance copies the master from the first (same image); the first then goes away
    second_path, second_cfg = services.config("keys-2", replicate_from=first)
    second = services.start(second_path, second_cfg)
    stop_process(services.procs[0])
    assert worker_key(tmp_path, second) == key
    # the first is lost for good: its backup, opened with the offline recovery key, makes a third
    third_path, third_cfg = services.config("keys-3")
    backup = Path(first_cfg.state_dir) / "keys-1.master-backup"
    subprocess.run([sys.executable, "-m", "cocoon", "keys", "restore", "--config", str(third_path),
                    "--backup", str(backup), "--recovery-key", str(recovery)], check=True, capture_output=True)
    assert worker_key(tmp_path, services.start(third_path, third_cfg)) == key
    # and an instance with a master of its own gives other keys
    fourth_path, fourth_cfg = services.config("keys-4")
    assert worker_key(tmp_path, services.start(fourth_path, fourth_cfg)) != key


def test_a_node_whose_image_the_registry_does_not_allow_is_refused_and_its_log_says_why(
        services: KeyServices, tmp_path: Path) -> None:
    address = services.start(*services.config("keys-1"))
    cfg = WorkerConfig(name="rogue", state_dir=str(tmp_path / "rogue"), engine="fake", image="cocoon-worker-rogue",
                       stats_port=free_port(), key_service=address)
    path = tmp_path / "rogue.toml"
    path.write_text(dump_config(cfg))
    log = tmp_path / "rogue.log"
    proc = spawn(["worker", "--config", str(path)], log)
    assert proc.wait(30) == 1
    text = log.read_text()
    rogue = fake_image_hash("cocoon-worker-rogue").hex()
    assert f"image hash {rogue} is not allowed for role 'worker' by the root registry" in text
    # a structured line, with the reason
    assert "no key from the key service" in [r.get("msg") for r in log_records(text)]
    assert get_json(f"http://127.0.0.1:{services.configs['keys-1'].stats_port}/jsonstats")["refused"] == 1


def test_a_peer_asking_for_another_roles_keys_is_refused(services: KeyServices) -> None:
    address = services.start(*services.config("keys-1"))
    host, port = address.split(":")

    async def ask(role_in_certificate: str, role_asked: str) -> object:
        identity = make_identity(role_in_certificate, get_backend("fake", image=WORKER_IMAGE), lifetime_s=300)
        stream = await tls.connect(host, int(port), identity, CertVerifier(load_policy("dev"), {"keys"}))
        try:
            stream.write(encode(KeyRequest(role=role_asked, names=["proxy-1/voucher-key"])))
            await stream.drain()
            return await receive(stream)
        finally:
            await stream.close()

    # a worker image (allowed as a worker) asks for a proxy's voucher key
    answer = asyncio.run(ask("worker", "proxy"))
    assert isinstance(answer, KeyRefused)
    assert answer.reason == "the certificate attests role 'worker': it cannot obtain the keys of role 'proxy'"
    # the same image, attested as a proxy, is not a proxy image the registry allows
    answer = asyncio.run(ask("proxy", "proxy"))
    assert isinstance(answer, KeyRefused) and "not allowed for role 'proxy'" in answer.reason
