"""Issue 15, item 10: attestation covered the image, not its configuration.

A genuine worker image configured with `engine = "openai:http://<operator's host>/…"` sent every prompt in the
clear to the operator; a genuine proxy started with a lax policy admitted fake-attested workers, and its peers
could not tell; a client linked to whatever genuine proxy answered at its proxy's address. Each test runs the
attack against real processes (fake attestation stands in for TDX, under policies that are otherwise strict)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cocoon.config import ClientConfig, Prices, ProxyConfig, WorkerConfig, load_config
from cocoon.inference.fake import FakeEngine
from cocoon.ledger import devnet
from cocoon.ledger.base import Terms
from cocoon.ledger.local import LocalLedger
from cocoon.ledger.wallet import Wallet
from cocoon.nodekeys import NodeKeys
from cocoon.worker.runner import WorkerNode
from tests.netutil import free_port, get_json
from tests.security.procs import role_process, stats, wait_stats, wait_until

WORKER_IMAGE, PROXY_IMAGE = "cocoon-worker-dev", "cocoon-proxy-dev"


def strict_policy(path: Path, *, remote_engines: str = "refuse", worker_pins: tuple[str, ...] = ()) -> Path:
    """What production enforces, for machines without TDX: fake attestation allowed, all else strict."""
    pins = f"config_hashes = {json.dumps(list(worker_pins))}\n" if worker_pins else ""
    path.write_text('name = "strict-fake"\nproduction_safe = false\nrefuse_weaker_peers = true\n'
                    '[roles.proxy]\nkinds = ["fake"]\n'
                    f'[roles.worker]\nkinds = ["fake"]\nremote_engines = "{remote_engines}"\n{pins}'
                    '[roles.client]\nkinds = ["none"]\n')
    return path


def config(path: Path, **fields: Any) -> Path:
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in fields.items()))
    return path


def config_hash(role: str, path: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "cocoon", "attest", "config-hash", "--role", role, "--config",
                          str(path)], capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


def log_of(tmp_path: Path, name: str) -> Path:
    return tmp_path / f"{name}.log"


def test_a_worker_configured_with_a_rogue_engine_is_refused_by_a_proxy_pinning_configurations(tmp_path: Path) -> None:
    """The operator points a genuine worker at an OpenAI server of its own (here on this machine, so that the
    worker can start: the pin, not the host, refuses it). The proxy's policy pins the configuration hash of the
    honest worker configuration: the same image with the rogue engine is refused, the honest one admitted."""
    policy = strict_policy(tmp_path / "policy.toml")
    proxy_port, proxy_stats, upstream = free_port(), free_port(), free_port()
    common = {"state_dir": str(tmp_path), "policy": str(policy)}
    worker = {"proxy": f"127.0.0.1:{proxy_port}", "image": WORKER_IMAGE, **common}
    proxy_cfg = config(tmp_path / "proxy.toml", name="proxy", port=proxy_port, stats_port=proxy_stats,
                       image=PROXY_IMAGE, **common)
    good_cfg = config(tmp_path / "good.toml", name="good", engine="fake", stats_port=free_port(), **worker)
    rogue_cfg = config(tmp_path / "rogue.toml", name="rogue", engine=f"openai:http://127.0.0.1:{upstream}/v1",
                       stats_port=free_port(), **worker)
    honest, rogue = config_hash("worker", good_cfg), config_hash("worker", rogue_cfg)
    assert honest != rogue
    strict_policy(policy, worker_pins=(honest,))  # pins stay out of the hash: the workers' hashes still hold

    with role_process("engine", tmp_path / "x", log_of(tmp_path, "upstream"), "fake", "--port", str(upstream)) as up:
        wait_until(lambda: stats_or_none(f"http://127.0.0.1:{upstream}/v1/models"),
                   [(up, log_of(tmp_path, "upstream"))], "the operator's engine")
        with role_process("proxy", proxy_cfg, log_of(tmp_path, "proxy")) as proxy, \
                role_process("worker", good_cfg, log_of(tmp_path, "good")) as good, \
                role_process("worker", rogue_cfg, log_of(tmp_path, "rogue")) as bad:
            procs = [(proxy, log_of(tmp_path, "proxy")), (good, log_of(tmp_path, "good")),
                     (bad, log_of(tmp_path, "rogue"))]

            def settled() -> list[str] | None:
                # the rogue worker either got in, or was refused (it retries: wait for the first refusal)
                workers = [w["name"] for w in (stats(proxy_stats) or {}).get("workers", [])]
                refused = f"configuration hash {rogue}" in log_of(tmp_path, "proxy").read_text()
                return workers if "rogue" in workers or ("good" in workers and refused) else None

            assert wait_until(settled, procs, "the proxy's verdict on both workers") == ["good"]
            text = log_of(tmp_path, "proxy").read_text()
            assert f"configuration hash {rogue} is not allowed for role 'worker' by policy 'strict-fake'" in text
            assert f"configuration hash {honest}" not in text


def stats_or_none(url: str) -> Any:
    try:
        return get_json(url)
    except (OSError, ValueError):
        return None


def test_a_worker_whose_engine_runs_off_its_machine_is_refused_unless_the_registry_lists_it(tmp_path: Path) -> None:
    """A remote engine (`openai:` on another host) under a policy that takes remote engines from the root
    registry: refused at the hello for every model the registry does not list with that origin, admitted once
    the registry's owner lists it. The proxy is a real process; the worker runs in this process with the fake
    engine in place of one at `operator-host.test` (tests reach only 127.0.0.1), its claims as configured."""
    policy = strict_policy(tmp_path / "policy.toml", remote_engines="registry")
    proxy_port, proxy_stats = free_port(), free_port()
    common = {"state_dir": str(tmp_path), "policy": str(policy)}
    proxy_cfg = config(tmp_path / "proxy.toml", name="proxy", port=proxy_port, stats_port=proxy_stats,
                       image=PROXY_IMAGE, **common)
    origin = "http://operator-host.test:8000"
    cfg = WorkerConfig(name="remote", proxy=f"127.0.0.1:{proxy_port}", engine=f"openai:{origin}/v1",
                       image=WORKER_IMAGE, stats_port=free_port(), **common)
    proxy_log = log_of(tmp_path, "proxy")

    async def attack(proxy: subprocess.Popen[bytes]) -> None:
        node = WorkerNode(cfg, engine=FakeEngine())
        stop = asyncio.Event()
        running = asyncio.create_task(node.run(stop))
        procs = [(proxy, proxy_log)]

        async def until(ready: Any, what: str) -> Any:
            return await asyncio.to_thread(wait_until, ready, procs, what)

        try:
            def verdict() -> str | None:
                if node.dialer.connected:
                    return "admitted"
                return "refused" if "does not list it for model(s)" in (node.dialer.last_error or "") else None

            assert await until(verdict, "the proxy's verdict") == "refused"
            assert (f"refused by peer: engine at {origin} runs outside the measured image, and the root registry "
                    f"(version 1) does not list it for model(s) ['{node.models[0]}']") in (node.dialer.last_error or "")
            assert (stats(proxy_stats) or {}).get("workers") == []
            owner = LocalLedger(tmp_path / "ledger.sqlite")
            try:
                owner.allow_engine(node.models[0], origin)
            finally:
                owner.close()
            await until(lambda: [w["name"] for w in (stats(proxy_stats) or {}).get("workers", [])] == ["remote"],
                        "the worker admitted once its engine is listed")
        finally:
            stop.set()
            await asyncio.wait_for(running, 30)

    with role_process("proxy", proxy_cfg, proxy_log) as proxy:
        wait_stats(proxy_stats, proxy, proxy_log)
        asyncio.run(attack(proxy))


def test_a_client_refuses_a_proxy_running_a_dev_policy(tmp_path: Path) -> None:
    """A genuine proxy image started with `policy = "dev"` admits fake-attested workers, i.e. anyone, who would
    then receive this client's prompts. A client running a stricter policy refuses to link to it."""
    policy = strict_policy(tmp_path / "policy.toml")
    proxy_port, proxy_stats, client_stats = free_port(), free_port(), free_port()
    proxy_cfg = config(tmp_path / "proxy.toml", name="proxy", port=proxy_port, stats_port=proxy_stats,
                       image=PROXY_IMAGE, state_dir=str(tmp_path), policy="dev")
    client_cfg = config(tmp_path / "client.toml", name="client", proxy=f"127.0.0.1:{proxy_port}",
                        api_port=free_port(), stats_port=client_stats, state_dir=str(tmp_path), policy=str(policy))
    with role_process("proxy", proxy_cfg, log_of(tmp_path, "proxy")) as proxy, \
            role_process("client", client_cfg, log_of(tmp_path, "client")) as client:
        procs = [(proxy, log_of(tmp_path, "proxy")), (client, log_of(tmp_path, "client"))]
        wait_stats(proxy_stats, proxy, log_of(tmp_path, "proxy"))

        def verdict() -> dict[str, Any] | None:
            s = stats(client_stats)
            return s if s and (s["proxy_connected"] or "weaker" in (s["last_link_error"] or "")) else None

        seen = wait_until(verdict, procs, "the client's verdict on the proxy")
        assert seen["proxy_connected"] is False
        assert "the proxy's policy 'dev' is weaker than 'strict-fake': it does not refuse weaker peers" in \
            seen["last_link_error"]
        assert (stats(proxy_stats) or {}).get("clients") == 0


def test_a_strict_proxy_refuses_a_worker_running_a_dev_policy(tmp_path: Path) -> None:
    """The other way round: a worker whose own policy would link it to any fake proxy (and so hand prompts it
    receives to anyone) is refused by a proxy that refuses weaker peers."""
    policy = strict_policy(tmp_path / "policy.toml")
    proxy_port, proxy_stats, worker_stats = free_port(), free_port(), free_port()
    proxy_cfg = config(tmp_path / "proxy.toml", name="proxy", port=proxy_port, stats_port=proxy_stats,
                       image=PROXY_IMAGE, state_dir=str(tmp_path), policy=str(policy))
    worker_cfg = config(tmp_path / "worker.toml", name="lax", proxy=f"127.0.0.1:{proxy_port}", engine="fake",
                        image=WORKER_IMAGE, stats_port=worker_stats, state_dir=str(tmp_path), policy="dev")
    proxy_log = log_of(tmp_path, "proxy")
    with role_process("proxy", proxy_cfg, proxy_log) as proxy, \
            role_process("worker", worker_cfg, log_of(tmp_path, "worker")) as worker:
        procs = [(proxy, proxy_log), (worker, log_of(tmp_path, "worker"))]

        def verdict() -> list[str] | None:
            workers = [w["name"] for w in (stats(proxy_stats) or {}).get("workers", [])]
            return workers or (["(refused)"] if "is weaker than" in proxy_log.read_text() else None)

        assert wait_until(verdict, procs, "the proxy's verdict on the worker") == ["(refused)"]
        assert "the worker's policy 'dev' is weaker than 'strict-fake': it does not refuse weaker peers" in \
            proxy_log.read_text()
        assert (stats(worker_stats) or {}).get("proxy_connected") is False


def test_a_client_refuses_a_proxy_whose_voucher_key_is_not_registered_at_the_address_it_dialed(tmp_path: Path
                                                                                              ) -> None:
    """Two proxies are registered in the root; the second (genuine image, its own registration elsewhere)
    listens at the first one's endpoint. The client, which opened its channel with the proxy registered there,
    must not link to it: that proxy's voucher key (in its attested claims) is not the one registered at the
    address the client dialed."""
    registered, elsewhere = free_port(), free_port()
    client_stats, impostor_stats = free_port(), free_port()
    common = {"state_dir": str(tmp_path), "policy": "dev", "payments": True}
    impostor_cfg = config(tmp_path / "proxy-b.toml", name="proxy-b", port=registered,
                          endpoint=f"127.0.0.1:{elsewhere}", stats_port=impostor_stats, image=PROXY_IMAGE, **common)
    client_cfg = config(tmp_path / "client.toml", name="client-1", proxy=f"127.0.0.1:{registered}",
                        api_port=free_port(), stats_port=client_stats, **common)
    impostor_keys = NodeKeys("proxy", load_config(impostor_cfg, ProxyConfig))
    genuine = devnet.ProxySpec(f"127.0.0.1:{registered}", Wallet(os.urandom(32)), Wallet(os.urandom(32)))
    devnet.prepare(tmp_path, proxies=[genuine, devnet.ProxySpec(f"127.0.0.1:{elsewhere}", impostor_keys.wallet(),
                                                                impostor_keys.voucher_key())],
                   parties=[NodeKeys("client", load_config(client_cfg, ClientConfig)).wallet()], prices=Prices(),
                   terms=Terms()).close()
    impostor_log = log_of(tmp_path, "proxy-b")
    with role_process("proxy", impostor_cfg, impostor_log) as impostor:
        wait_stats(impostor_stats, impostor, impostor_log)
        with role_process("client", client_cfg, log_of(tmp_path, "client")) as client:
            procs = [(impostor, impostor_log), (client, log_of(tmp_path, "client"))]

            def verdict() -> dict[str, Any] | None:
                s = stats(client_stats)
                return s if s and (s["proxy_connected"] or "voucher key" in (s["last_link_error"] or "")) else None

            seen = wait_until(verdict, procs, "the client's verdict on the proxy", timeout=120)
            assert seen["proxy_connected"] is False
            assert f"the proxy at 127.0.0.1:{registered} claims voucher key" in seen["last_link_error"]
            assert "at that endpoint" in seen["last_link_error"]
            time.sleep(0.5)
            assert (stats(impostor_stats) or {}).get("clients") == 0
            assert "client connected" not in impostor_log.read_text()
