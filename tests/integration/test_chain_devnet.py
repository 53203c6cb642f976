"""`cocoon chain serve` as a real process on 127.0.0.1: its faucet funds standard wallet v4r2 addresses, the `ton`
backend over the toncenter-v2 HTTP transport deploys the wallets and operates cocoon's contracts through it, reads
them back through get-methods, and every nanoTON is accounted for (funded = balances + fees read from the chain)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytoniq_core import Address, begin_cell

from cocoon.chain.devnet import CHAIN_FILE
from cocoon.fsutil import private_dir
from cocoon.ledger import layouts
from cocoon.ledger.base import TON, LedgerRefused
from cocoon.ledger.contracts import LOCAL_GLOBAL_ID
from cocoon.ledger.local import LocalLedger
from cocoon.ledger.ton import TonLedger, wallet_v4_transfer, wallet_v4r2_address
from cocoon.ledger.toncenter import ToncenterTransport
from cocoon.ledger.wallet import Wallet
from tests.netutil import free_port, stop_process

SRC = Path(__file__).resolve().parents[2] / "src"
BLOCK_S = 0.1


def _v4(seed: int) -> Wallet:
    key = Wallet(bytes([seed]) * 32)
    return Wallet(bytes([seed]) * 32, address=wallet_v4r2_address(key.public_key))


OPERATOR, CLIENT, VOUCHER_KEY = _v4(1), _v4(2), Wallet(b"\x03" * 32)


def _post(url: str, body: Any) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@contextlib.contextmanager
def _serve(state: Path) -> Iterator[dict[str, Any]]:
    """`cocoon chain serve` on `state` until the block ends; its /devnet/info."""
    port = free_port()
    log = (state / "serve.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "cocoon", "chain", "serve", "--state-dir", str(state), "--port",
                             str(port), "--block-interval", str(BLOCK_S)],
                            env={**os.environ, "PYTHONPATH": str(SRC)}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (state / "serve.log").read_text()
            try:
                status, info = _get(f"{url}/devnet/info")
                break
            except OSError:
                assert time.monotonic() < deadline, "the devnet did not listen within 30 s"
                time.sleep(0.1)
        assert status == 200 and json.loads((state / "devnet.json").read_text())["root"] == info["result"]["root"]
        yield {"url": url, "api": f"{url}/api/v2", **info["result"]}
    finally:
        stop_process(proc)
        log.close()
    assert proc.returncode == 0, (state / "serve.log").read_text()


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state = private_dir(tmp_path_factory.mktemp("devnet") / "chain")
    # the registry owner's own operation, before the devnet serves: a proxy owned by a standard wallet
    local = LocalLedger(state / CHAIN_FILE)
    proxy = local.register_proxy(OPERATOR.address, VOUCHER_KEY.public_key, "127.0.0.1:1")
    local.close()
    with _serve(state) as info:
        yield {**info, "proxy": proxy, "state": state}


def test_the_devnet_keeps_its_state_in_its_directory(tmp_path: Path) -> None:
    state = private_dir(tmp_path / "chain")
    with _serve(state) as first:
        status, _ = _post(f"{first['url']}/devnet/faucet", {"address": CLIENT.address, "amount": 3 * TON})
        assert status == 200
        transport = ToncenterTransport(first["api"])
        assert transport.global_id() == first["global_id"] == LOCAL_GLOBAL_ID
        seqno = transport.masterchain_seqno()
    with _serve(state) as second:
        transport = ToncenterTransport(second["api"])
        assert second["root"] == first["root"] and transport.balance(CLIENT.address) == 3 * TON
        assert transport.masterchain_seqno() >= seqno


def test_faucet_wallets_and_contracts_over_the_http_api(devnet: dict[str, Any]) -> None:
    api, proxy = devnet["api"], devnet["proxy"]
    transport = ToncenterTransport(api, poll_s=0.05, settle_s=5)
    ledger = TonLedger(devnet["root"], transport, sync_s=3600)
    try:
        seqno = transport.masterchain_seqno()
        # the faucet: its command for one wallet (user-friendly address), its endpoint for the other
        friendly = Address(CLIENT.address).to_str(is_user_friendly=True, is_bounceable=False)
        done = subprocess.run([sys.executable, "-m", "cocoon", "chain", "faucet", friendly, "20", "--url",
                               devnet["url"]], env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "funded" in done.stdout and "20.000000000 TON" in done.stdout
        status, paid = _post(f"{devnet['url']}/devnet/faucet", {"address": OPERATOR.address, "amount": 30 * TON})
        assert status == 200 and paid["result"]["balance"] == str(30 * TON)
        assert transport.masterchain_seqno() > seqno  # blocks are produced
        assert (transport.balance(CLIENT.address), transport.is_active(CLIENT.address)) == (20 * TON, False)

        # proxy and root hold what the registration (before the devnet served) left them
        held = {a: transport.balance(a) for a in (proxy, devnet["root"])}
        stake = ledger.root_params().terms.min_proxy_stake
        staked = ledger.add_proxy_stake(OPERATOR, proxy, stake)  # the operator wallet's first message deploys it
        _, wallet = _get(f"{api}/getWalletInformation?address={OPERATOR.address}")
        assert wallet["result"]["wallet"] and wallet["result"]["seqno"] == 1
        opened = ledger.open_channel(CLIENT, proxy, 5 * TON, 2 * TON)
        assert staked.fees is not None and opened.fees is not None and staked.fees > 0 and opened.fees > 0

        channel = ledger.client_channel_address(proxy, CLIENT.address)
        state = ledger.channel_state(channel)
        assert (state.state, state.stake, state.balance) == ("open", 2 * TON, 5 * TON)
        assert ledger.proxy_state(proxy).open_clients == 1 and ledger.proxy_state(proxy).stake == stake
        assert ledger.wallet_key(CLIENT.address) == CLIENT.public_key  # the standard wallet's get_public_key

        # every nanoTON the faucet minted is in a balance or was paid as a fee the chain's transactions show
        balances = sum(transport.balance(a) for a in (OPERATOR.address, CLIENT.address, channel)) + \
            sum(transport.balance(a) - held[a] for a in held)
        assert balances + staked.fees + opened.fees == 50 * TON

        # a contract's refusal comes back as one (its fees spent) and changes nothing else
        with pytest.raises(LedgerRefused, match="below_stake"):
            ledger.withdraw(CLIENT, channel, 4 * TON)
        assert ledger.channel_state(channel).balance == 5 * TON
    finally:
        ledger.close()


def test_bad_submissions_get_toncenters_errors(devnet: dict[str, Any]) -> None:
    api = devnet["api"]
    status, answer = _post(f"{api}/sendBoc", {"boc": "not base64!"})
    assert status == 422 and answer == {"ok": False, "error": "boc is not base64", "code": 422}
    status, answer = _post(f"{api}/sendBoc", {"boc": base64.b64encode(b"\xb5\xee\x9c\x72garbage").decode()})
    assert status == 400 and not answer["ok"] and "not a serialized message" in answer["error"]
    internal = layouts.internal_message(Address(CLIENT.address), Address(devnet["proxy"]), TON, begin_cell().end_cell())
    status, answer = _post(f"{api}/sendBoc", {"boc": base64.b64encode(internal.to_boc()).decode()})
    assert status == 400 and "only external inbound messages" in answer["error"]
    # signed by another key: the wallet does not accept it, as a liteserver would say
    forged = wallet_v4_transfer(Wallet(b"\x09" * 32, address=CLIENT.address), 0, [internal],
                                valid_until=int(time.time()) + 60)
    status, answer = _post(f"{api}/sendBocReturnHash", {"boc": base64.b64encode(forged.to_boc()).decode()})
    assert status == 500 and "External message was not accepted" in answer["error"] and answer["code"] == 500
    status, answer = _get(f"{api}/getTransactions")
    assert status == 422 and answer["error"] == "parameter address is required"
    status, answer = _get(f"{api}/getAddressInformation?address=nonsense")
    assert status == 416 and not answer["ok"]
    status, answer = _get(f"{api}/noSuchMethod")
    assert status == 404 and answer["ok"] is False and answer["code"] == 404
    status, answer = _post(f"{devnet['url']}/devnet/faucet", {"address": CLIENT.address, "amount": -1})
    assert status == 422 and "faucet amount" in answer["error"]
