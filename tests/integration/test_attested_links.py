"""Attestation between real processes: a proxy admits only the worker images its policy allows."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from cocoon.attest.fake import fake_image_hash
from tests.netutil import free_port, get_json, stop_process


def start(role: str, cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cocoon", role, "--config", str(cfg)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def test_worker_with_an_image_hash_not_on_the_allow_list_is_refused(tmp_path: Path) -> None:
    good_image = "cocoon-worker-dev"
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'name = "only-good-workers"\nproduction_safe = false\n'
        f'[roles.worker]\nkinds = ["fake"]\nimage_hashes = ["{fake_image_hash(good_image).hex()}"]\n'
        '[roles.client]\nkinds = ["none"]\n'
    )
    proxy_port, proxy_stats, good_stats, evil_stats = (free_port() for _ in range(4))
    common = f'state_dir = "{tmp_path}"\n'
    (tmp_path / "proxy.toml").write_text(f'name = "proxy"\n{common}port = {proxy_port}\nstats_port = {proxy_stats}\n'
                                         f'policy = "{policy}"\nimage = "cocoon-proxy-dev"\n')
    for name, image, stats in (("good", good_image, good_stats), ("evil", "cocoon-worker-evil", evil_stats)):
        (tmp_path / f"{name}.toml").write_text(
            f'name = "{name}"\n{common}proxy = "127.0.0.1:{proxy_port}"\nengine = "fake"\nimage = "{image}"\n'
            f"stats_port = {stats}\n")
    procs = [start("proxy", tmp_path / "proxy.toml", tmp_path / "proxy.log")]
    try:
        procs += [start("worker", tmp_path / f"{n}.toml", tmp_path / f"{n}.log") for n in ("good", "evil")]
        deadline = time.monotonic() + 30
        evil: dict = {}
        workers: list = []
        while time.monotonic() < deadline:
            try:
                workers = get_json(f"http://127.0.0.1:{proxy_stats}/jsonstats")["workers"]
                evil = get_json(f"http://127.0.0.1:{evil_stats}/jsonstats")
            except OSError:
                time.sleep(0.2)
                continue
            # The evil worker may first fail to connect at all (started before the proxy listens): wait for
            # the proxy's refusal itself.
            if workers and "not allowed" in (tmp_path / "proxy.log").read_text():
                break
            time.sleep(0.2)
        assert [w["name"] for w in workers] == ["good"]
        assert evil["proxy_connected"] is False
        proxy_log = (tmp_path / "proxy.log").read_text()
        assert "image hash" in proxy_log and "not allowed" in proxy_log
        assert "cocoon-worker-evil" not in proxy_log  # the log names hashes, never trusts a claimed name
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            stop_process(p, timeout=15)
