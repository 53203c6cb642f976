"""`cocoon up` is a network, not one directory: every role reaches the chain over its HTTP API, and no file is
opened by two processes. Read from the running processes themselves (/proc/PID/fd)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.netutil import Net, get_json


def _open_files(pid: int) -> set[Path]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = Path(os.readlink(fd))
        except OSError:  # closed meanwhile
            continue
        if target.is_absolute() and target.is_file():
            out.add(target.resolve())
    return out


def test_no_file_is_opened_by_two_roles_and_each_keeps_to_its_own_state_dir(fake_net: Net) -> None:
    get_json(fake_net.node("client-1")["stats_url"] + "/jsonstats")  # every process up and serving
    state = fake_net.state_dir.resolve()
    own: dict[str, set[Path]] = {}
    for process in [*fake_net.info["processes"], {"name": "chain", **fake_net.chain}]:
        files = {f for f in _open_files(process["pid"]) if f.is_relative_to(state)}
        log = state / "logs" / f"{process['name']}.log"
        home = state / process["name"]
        assert files, process["name"]
        assert {f for f in files if f != log and not f.is_relative_to(home)} == set(), process["name"]
        own[process["name"]] = files
    names = list(own)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert own[a].isdisjoint(own[b]), (a, b, own[a] & own[b])
    # the chain's files are its own: the nodes hold none of them, and there is no shared ledger file
    assert any(f.name == "chain.sqlite" for f in own["chain"])
    assert not list(state.rglob("ledger.sqlite*"))


def test_the_roles_reach_the_chain_over_its_http_api(fake_net: Net) -> None:
    info = get_json(fake_net.chain["url"] + "/devnet/info")["result"]
    assert info["root"] == fake_net.chain["root"] and info["api_calls"] > 0
    for name in ("proxy-1", "worker-1", "client-1"):
        config = Path(fake_net.node(name)["config"]).read_text()
        assert f'ton_api = "{fake_net.chain["api"]}"' in config and f'root = "{fake_net.chain["root"]}"' in config
        assert 'network = "devnet"' in config
