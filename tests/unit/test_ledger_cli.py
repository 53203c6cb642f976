"""`cocoon ledger`: a client's channel from the command line, amounts in TON with 9 decimals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cocoon.cli import app
from cocoon.config import ClientConfig, CommonConfig, Prices, ProxyConfig, WorkerConfig, dump_config
from cocoon.ledger.base import TON, Terms
from cocoon.ledger.devnet import ProxySpec, prepare
from cocoon.ledger_cli import parse_ton
from cocoon.nodekeys import NodeKeys

ENDPOINT = "127.0.0.1:10100"

# the chain's clock is real time: a second may tick between the close and the reading of its delay
DELAY_WINDOW = range(3590, 3601)


def seconds_in(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    assert match, text
    return int(match.group(1))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    configs: dict[str, CommonConfig] = {
        "proxy": ProxyConfig(name="proxy-1", state_dir=str(tmp_path), image="proxy-image"),
        "client": ClientConfig(name="client-1", proxy=ENDPOINT, state_dir=str(tmp_path)),
        "worker": WorkerConfig(name="worker-1", proxy=ENDPOINT, state_dir=str(tmp_path), image="worker-image")}
    for cfg in configs.values():
        (tmp_path / f"{cfg.name}.toml").write_text(dump_config(cfg))
    keys = {role: NodeKeys(role, cfg) for role, cfg in configs.items()}
    prepare(tmp_path, proxies=[ProxySpec(ENDPOINT, keys["proxy"].wallet(), keys["proxy"].voucher_key())],
            parties=[keys["client"].wallet(), keys["worker"].wallet()], prices=Prices(), terms=Terms()).close()
    return tmp_path


def ledger(state: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["ledger", *args, "--state-dir", str(state)])
    return result.exit_code, result.output


def test_a_channel_opened_topped_up_withdrawn_and_closed(state: Path) -> None:
    assert ledger(state, "deposit", "2.5", "--stake", "1")[1].startswith("open channel: done (chain fees 0.0062")
    code, out = ledger(state, "status")
    assert code == 0 and "(open): balance 2.500000000 TON (stake 1.000000000)" in out
    assert "proxy 0:" in out and f"at {ENDPOINT}: active, stake 10.000000000 TON" in out
    assert ledger(state, "deposit", "0.000000001")[0] == 0
    assert ledger(state, "withdraw", "1.000000001")[0] == 0
    code, out = ledger(state, "withdraw", "0.6")
    assert code == 1 and "exit code 105 (below_stake" in out
    code, out = ledger(state, "close")
    assert code == 0 and seconds_in(r"finalized after (\d+) s", out) in DELAY_WINDOW
    code, out = ledger(state, "close")
    assert code == 1 and seconds_in(r"the close delay ends in (\d+) s", out) in DELAY_WINDOW
    assert "chain time is now" in ledger(state, "advance", "3600")[1]
    code, out = ledger(state, "close")
    assert code == 0 and "finalize close: done" in out
    assert "(new): balance 0.000000000 TON" in ledger(state, "status")[1]  # the next channel, not yet opened


def test_amounts_and_missing_things_are_explained(state: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert parse_ton("1.5") == 3 * TON // 2 and parse_ton("0.000000001") == 1
    for bad in ("1.0000000001", "-1", "ten"):
        with pytest.raises(typer.BadParameter):
            parse_ton(bad)
    code, out = ledger(state, "redeem")
    assert code == 1 and "no payout voucher yet" in out
    code, out = ledger(state, "withdraw", "1", "--name", "proxy-1")
    assert code == 2 and "names no proxy" in out
    code, out = ledger(tmp_path_factory.mktemp("empty"), "status")
    assert code == 2 and "no local ledger" in out


def test_a_wallet_opens_only_on_the_nodes_platform(state: Path) -> None:
    assert ledger(state, "deposit", "2.5", "--stake", "1")[0] == 0  # the operator, on the node's platform
    (state / "platform-secret").rename(state / "platform-secret.away")  # as on another machine
    code, out = ledger(state, "deposit", "1")
    assert code == 2 and "client-1.wallet does not open with the key this node gets" in out
    code, out = ledger(state, "status")
    assert code == 0 and "client-1: wallet not opened: " in out and "proxy 0:" in out  # the rest still shows
