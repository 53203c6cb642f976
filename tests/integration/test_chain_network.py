"""Every role's chain is the network its config names, reached over the toncenter-v2 HTTP API: a real `cocoon chain
serve` process whose registry a standard wallet owns, several operations in one signed wallet transfer (each one's
own outcome and fees, read from the chain), and a node that refuses a chain of another network."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cocoon.config import ProxyConfig, dump_config
from cocoon.fsutil import private_dir
from cocoon.ledger.base import TON, LedgerError, LedgerRefused, Outcome
from cocoon.ledger.contracts import LOCAL_GLOBAL_ID, Tag
from cocoon.ledger.owner import RootOwner
from cocoon.ledger.ton import TonLedger, wallet_v4r2_address
from cocoon.ledger.toncenter import ToncenterTransport
from cocoon.ledger.vouchers import sign_voucher
from cocoon.ledger.wallet import Wallet
from tests.netutil import devnet, free_port, get_json

BLOCK_S = 0.1


def _v4(seed: int) -> Wallet:
    return Wallet(bytes([seed]) * 32, address=wallet_v4r2_address(Wallet(bytes([seed]) * 32).public_key))


OWNER, OPERATOR, ALICE, BOB = _v4(11), _v4(12), _v4(13), _v4(14)
VOUCHER_KEY = Wallet(b"\x0f" * 32)


def _fund(url: str, address: str, amount: int) -> None:
    import json
    import urllib.request

    req = urllib.request.Request(f"{url}/devnet/faucet", data=json.dumps({"address": address, "amount": amount})
                                 .encode(), headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert json.loads(resp.read())["ok"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state = private_dir(tmp_path_factory.mktemp("net") / "chain")
    with devnet(state, block_s=BLOCK_S, owner_key=OWNER.public_key) as info:
        yield {**info, "state": state}


def _ledger(chain: dict[str, Any]) -> TonLedger:
    return TonLedger(chain["root"], ToncenterTransport(chain["api"], poll_s=0.05, settle_s=5), sync_s=3600)


def test_a_standard_wallet_owns_the_registry_and_changes_it_four_changes_a_transfer(chain: dict[str, Any]) -> None:
    assert chain["owner"] == OWNER.address and chain["global_id"] == LOCAL_GLOBAL_ID
    _fund(chain["url"], OWNER.address, 50 * TON)
    ledger = _ledger(chain)
    try:
        owner = RootOwner(ledger, OWNER)
        version = ledger.read_root().version
        seqno_before = _seqno(chain, OWNER.address)
        params = owner.set_allowed_images("worker", [bytes([i]) * 32 for i in range(5)])
        assert params.worker_image_hashes == {(bytes([i]) * 32).hex() for i in range(5)}
        assert params.version == version + 5
        # five changes, two signed transfers (four messages, then one; the first deploying the wallet), then the
        # owner's signature over the registry log's new head: three wallet seqnos
        assert _seqno(chain, OWNER.address) == seqno_before + 3
        assert params.log_signed_size == params.log_size  # every change vouched for, by the new owner's key
        proxy = owner.register_proxy(OPERATOR.address, VOUCHER_KEY.public_key, "127.0.0.1:1")
        assert ledger.find_proxy("127.0.0.1:1").address == proxy
        # a wallet that is not the owner is refused by the root, its fees spent
        _fund(chain["url"], ALICE.address, 5 * TON)
        with pytest.raises(LedgerRefused, match="unauthorized"):
            RootOwner(ledger, ALICE).allow_engine("m", "http://10.0.0.1:80")
    finally:
        ledger.close()


def _seqno(chain: dict[str, Any], address: str) -> int:
    info = get_json(f"{chain['api']}/getWalletInformation?address={address}")["result"]
    return int(info.get("seqno", 0))


def test_claims_of_several_channels_go_in_one_transfer_each_with_its_own_outcome(chain: dict[str, Any]) -> None:
    ledger = _ledger(chain)
    try:
        _fund(chain["url"], OWNER.address, 5 * TON)
        proxy = RootOwner(ledger, OWNER).register_proxy(OPERATOR.address, VOUCHER_KEY.public_key, "127.0.0.1:2")
        for wallet in (OPERATOR, ALICE, BOB):
            _fund(chain["url"], wallet.address, 30 * TON)
        ledger.add_proxy_stake(OPERATOR, proxy, ledger.root_params().terms.min_proxy_stake)
        channels = []
        for wallet in (ALICE, BOB):
            ledger.open_channel(wallet, proxy, 5 * TON, 2 * TON)
            channels.append(ledger.client_channel_address(proxy, wallet.address))
        gid = ledger.global_id()
        good = [sign_voucher(VOUCHER_KEY, Tag.CHARGE, c, 1, (i + 1) * TON, global_id=gid)
                for i, c in enumerate(channels)]
        forged = sign_voucher(ALICE, Tag.CHARGE, channels[0], 2, 4 * TON, global_id=gid)  # not the proxy's key
        seqno = _seqno(chain, OPERATOR.address)
        before = ledger.balance(OPERATOR.address)
        results = ledger.settle_charges(OPERATOR, [*good, forged])
        assert _seqno(chain, OPERATOR.address) == seqno + 1  # one signed transfer for the three claims
        assert isinstance(results[0], Outcome) and isinstance(results[1], Outcome)
        assert isinstance(results[2], LedgerRefused) and results[2].address == channels[0]
        assert [ledger.channel_state(c).charged for c in channels] == [TON, 2 * TON]
        fees = [r.fees for r in results[:2]]
        assert all(f is not None and f > 0 for f in fees)
        # the operator wallet paid every message's value and the fees; the claims' values came back with the
        # proxy's earnings, so its balance moved by the chain's own accounting: nothing is guessed
        assert ledger.balance(OPERATOR.address) < before
    finally:
        ledger.close()


def test_a_node_refuses_a_chain_of_another_network_naming_both_ids(chain: dict[str, Any], tmp_path: Path) -> None:
    cfg = ProxyConfig(name="proxy-x", state_dir=str(tmp_path / "proxy-x"), port=0, network="testnet",
                      ton_api=chain["api"], root=chain["root"])
    path = tmp_path / "proxy-x.toml"
    path.write_text(dump_config(cfg))
    done = subprocess.run([sys.executable, "-m", "cocoon", "proxy", "--config", str(path)], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stderr
    assert f"global id {LOCAL_GLOBAL_ID} (devnet)" in done.stderr and "'testnet' (global id -3)" in done.stderr


def test_a_config_naming_a_chain_api_without_a_root_or_another_network_is_refused(tmp_path: Path) -> None:
    from cocoon.config import ConfigError, load_config

    path = tmp_path / "c.toml"
    path.write_text('name = "w"\nton_api = "http://127.0.0.1:1/api/v2"\n')
    with pytest.raises(ConfigError, match="ton_api needs root"):
        load_config(path, ProxyConfig)
    path.write_text('name = "w"\nnetwork = "moonnet"\n')
    with pytest.raises(ConfigError, match="network must be one of devnet, testnet, mainnet"):
        load_config(path, ProxyConfig)
    path.write_text('name = "w"\nliteservers = "/etc/ton/global.config.json"\n')
    from cocoon.ledger.network import open_ledger

    with pytest.raises(LedgerError, match=r"liteservers .* not supported yet"):
        open_ledger(load_config(path, ProxyConfig))


def test_attest_verify_reads_the_registry_over_the_chain_api(chain: dict[str, Any]) -> None:
    from cocoon.attest.tdx import parse_tdx_quote
    from tests.tdxdata import INSIDE_WINDOW, SAMPLE_QUOTE
    from tests.unit.test_cli_attest import verify_sample

    image = parse_tdx_quote(SAMPLE_QUOTE.read_bytes()).measurements.image_hash()
    args = ("--policy", "production", "--now", str(INSIDE_WINDOW), "--ledger", chain["api"])
    code, out = verify_sample(*args)
    assert code == 2 and "--root" in out
    code, out = verify_sample(*args, "--root", chain["root"])
    assert code == 1 and f"refused: image hash {image.hex()} is not allowed for role 'worker'" in out
    _fund(chain["url"], OWNER.address, 5 * TON)
    ledger = _ledger(chain)
    try:
        RootOwner(ledger, OWNER).set_allowed_images("worker", [image])
    finally:
        ledger.close()
    code, out = verify_sample(*args, "--root", chain["root"])
    assert code == 0, out


def _proxy_against(api: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    cfg = ProxyConfig(name="proxy-y", state_dir=str(tmp_path / "proxy-y"), port=0, ton_api=api,
                      root="0:" + "ab" * 32)
    path = tmp_path / "proxy-y.toml"
    path.write_text(dump_config(cfg))
    return subprocess.run([sys.executable, "-m", "cocoon", "proxy", "--config", str(path)], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_a_node_whose_chain_api_is_down_says_so_after_retrying(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    done = _proxy_against(f"http://127.0.0.1:{port}/api/v2", tmp_path)
    assert done.returncode == 1, done.stderr
    assert f"chain API http://127.0.0.1:{port}/api/v2 getConfigParam: unreachable" in done.stderr
    assert "after 4 attempts" in done.stderr


def test_a_node_whose_chain_api_answers_garbage_says_so_after_retrying(tmp_path: Path) -> None:
    from tests.unit.test_ledger_toncenter import Scripted

    with Scripted([(200, b"<html>maintenance</html>")]) as server:
        done = _proxy_against(server.url, tmp_path)
    assert done.returncode == 1, done.stderr
    assert "getConfigParam: HTTP 200, not JSON" in done.stderr and "after 4 attempts" in done.stderr
    assert len(server.requests) == 4  # retried with backoff, a bounded number of times
