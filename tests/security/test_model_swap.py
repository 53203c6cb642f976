"""Issue 11, item 3: a worker served other weights under a model's name, and nobody could tell.

A genuine worker image whose operator swaps the weights (a cheaper model under an expensive name) still announced
the same model name; nothing it attested named the weights. Now its claims carry the weights' SHA-256 and a policy
taking model hashes from the root registry (`production` does) refuses a worker whose hash the registry does not
list for the models it serves. The proxy is a real process under such a policy (fake attestation standing in for
TDX); the workers run in this process with the fake engine, their weights' hash declared as its operator would."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path
from typing import Any

from cocoon.config import WorkerConfig
from cocoon.ledger.local import LocalLedger
from cocoon.worker.runner import WorkerNode
from tests.netutil import free_port
from tests.security.procs import proxy_config, role_process, stats, wait_stats, wait_until

LISTED = hashlib.sha256(b"the registered weights").hexdigest()
SWAPPED = hashlib.sha256(b"cheaper weights under the same name").hexdigest()


def test_a_worker_serving_weights_the_registry_does_not_list_for_its_model_is_refused(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('name = "models-from-registry"\nproduction_safe = false\nrefuse_weaker_peers = true\n'
                      '[roles.proxy]\nkinds = ["fake"]\n'
                      '[roles.worker]\nkinds = ["fake"]\nremote_engines = "refuse"\nmodel_hashes = "registry"\n'
                      '[roles.client]\nkinds = ["none"]\n')
    proxy_port, proxy_stats = free_port(), free_port()
    proxy_cfg = proxy_config(tmp_path, proxy_port, proxy_stats,
                             f'policy = "{policy}"\nimage = "cocoon-proxy-dev"\n')
    proxy_log = tmp_path / "proxy.log"

    def worker(name: str, weights: str) -> WorkerNode:
        return WorkerNode(WorkerConfig(name=name, proxy=f"127.0.0.1:{proxy_port}", engine="fake",
                                       engine_options={"model_hash": weights}, image="cocoon-worker-dev",
                                       stats_port=free_port(), state_dir=str(tmp_path), policy=str(policy)))

    async def attack(proxy: subprocess.Popen[bytes]) -> None:
        procs = [(proxy, proxy_log)]

        async def until(ready: Any, what: str) -> Any:
            return await asyncio.to_thread(wait_until, ready, procs, what)

        swapped, honest = worker("swapped", SWAPPED), worker("honest", LISTED)
        stop = asyncio.Event()
        running = [asyncio.create_task(node.run(stop)) for node in (swapped, honest)]
        try:
            await until(lambda: [w["name"] for w in (stats(proxy_stats) or {}).get("workers", [])] == ["honest"],
                        "the worker with the listed weights admitted")

            def verdict() -> str | None:
                if swapped.dialer.connected:
                    return "admitted"
                return "refused" if "is not listed" in (swapped.dialer.last_error or "") else None

            assert await until(verdict, "the proxy's verdict on the swapped weights") == "refused"
            assert (f"model hash {SWAPPED} is not listed in the root registry") in (swapped.dialer.last_error or "")
            assert "['fake-model']" in (swapped.dialer.last_error or "")
            assert [w["name"] for w in (stats(proxy_stats) or {}).get("workers", [])] == ["honest"]
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*running), 30)

    owner = LocalLedger(tmp_path / "ledger.sqlite")  # the root's owner lists the real weights for the model
    try:
        owner.allow_model("fake-model", LISTED)
    finally:
        owner.close()
    with role_process("proxy", proxy_cfg, proxy_log) as proxy:
        wait_stats(proxy_stats, proxy, proxy_log)
        asyncio.run(attack(proxy))
