"""Issue 15 item 6: key files stolen from a `cocoon up` state dir pay a thief.

The attack, as it worked before: copy `proxy-1.voucher-key` out of the state dir, sign with it a charge voucher for
a client's whole channel and a payout voucher to a worker channel of the thief's own wallet, and submit both to the
chain: the channel is emptied into the proxy contract and paid out to the thief. A copied `client-1.wallet` likewise
was the client's wallet. Now every such file is ciphertext sealed to its node's platform, image, role and name, the
state dir and its secrets are owner-only, and the chain file holds no owner seed.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cocoon.ledger.base import TON, LedgerRefused
from cocoon.ledger.contracts import Tag
from cocoon.ledger.ton import wallet_v4r2_address
from cocoon.ledger.vouchers import sign_voucher
from cocoon.ledger.wallet import Wallet
from cocoon.nodekeys import operator_keys
from cocoon.ratls.sealed_file import SealedFileError
from tests.netutil import Net, chain_ledger, devnet_call, localnet


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    with localnet(tmp_path_factory.mktemp("stolen") / "state", engine="fake", workers=1) as running:
        yield running


def v4(seed: bytes) -> Wallet:
    """The standard wallet v4r2 of `seed`: what every party's wallet is."""
    return Wallet(seed, wallet_v4r2_address(Wallet(seed).public_key))


def every_seed_in(blob: bytes) -> list[Wallet]:
    """Every key a thief could read out of a file: each of its 32-byte windows taken as a seed."""
    return [v4(blob[i:i + 32]) for i in range(len(blob) - 31)]


def fund(net: Net, wallet: Wallet, amount: int) -> None:
    devnet_call(net.chain, "faucet", {"address": wallet.address, "amount": amount})


def test_a_stolen_voucher_key_file_neither_charges_a_channel_nor_pays_a_thief(net: Net) -> None:
    stolen = (net.node_dir("proxy-1") / "proxy-1.voucher-key").read_bytes()
    ledger = chain_ledger(net.chain)
    try:
        (proxy,) = ledger.proxies()
        assert proxy.pubkey not in {w.public_key for w in every_seed_in(stolen)}  # the file holds no key

        client = operator_keys(net.state_dir, "client-1").wallet()  # the operator, on the node's own platform
        channel = ledger.client_channel_address(proxy.address, client.address, 0)
        before = ledger.channel_state(channel)
        assert before.state == "open" and before.balance >= 10 * TON
        thief = v4(os.urandom(32))
        fund(net, thief, TON)  # for the fees
        forged = Wallet(stolen[:32])  # what the file held before: the raw seed
        drain = sign_voucher(forged, Tag.CHARGE, channel, before.seqno + 1, before.charged + before.balance,
                             global_id=ledger.global_id())
        with pytest.raises(LedgerRefused, match="bad_signature"):
            ledger.settle_charge(thief, drain)
        payout = sign_voucher(forged, Tag.PAYOUT, ledger.worker_channel_address(proxy.address, thief.address), 1,
                              before.balance, global_id=ledger.global_id())
        with pytest.raises(LedgerRefused, match="bad_signature"):
            ledger.redeem(thief, proxy.address, payout)
        after = ledger.channel_state(channel)
        assert (after.charged, after.balance) == (before.charged, before.balance)
        assert ledger.balance(thief.address) < TON  # fees spent, nothing gained
    finally:
        ledger.close()


def test_a_stolen_wallet_file_is_no_wallet(net: Net) -> None:
    ledger = chain_ledger(net.chain)
    try:
        (proxy,) = ledger.proxies()
        client = operator_keys(net.state_dir, "client-1").wallet()
        channel = ledger.client_channel_address(proxy.address, client.address, 0)
        for name, owner in (("client-1", client.address), ("proxy-1", proxy.owner)):
            stolen = (net.node_dir(name) / f"{name}.wallet").read_bytes()
            assert owner not in {w.address for w in every_seed_in(stolen)}
        forged = v4((net.node_dir("client-1") / "client-1.wallet").read_bytes()[:32])  # what the file held before
        fund(net, forged, TON)  # the thief pays the fees
        before = ledger.channel_state(channel)
        with pytest.raises(LedgerRefused, match="unauthorized"):  # the channel answers only its client's wallet
            ledger.withdraw(forged, channel, TON)
        assert ledger.channel_state(channel).balance == before.balance
    finally:
        ledger.close()


def test_copied_to_another_platform_the_files_do_not_open(net: Net, tmp_path: Path) -> None:
    """The thief copies the key files with the configs that say how they were sealed, but not the platform's
    secret: the node's own path does not open them there, while it does on the node's platform."""
    ledger = chain_ledger(net.chain)
    (proxy,) = ledger.proxies()
    ledger.close()
    assert operator_keys(net.state_dir, "proxy-1").voucher_key().public_key == proxy.pubkey
    for name in ("proxy-1.voucher-key", "proxy-1.wallet", "client-1.wallet"):
        shutil.copy(net.node_dir(name.split(".")[0]) / name, tmp_path / name)
    for name in ("proxy-1.toml", "client-1.toml"):
        shutil.copy(net.state_dir / name, tmp_path / name)
    with pytest.raises(SealedFileError, match="does not open with the key this node gets"):
        operator_keys(tmp_path, "proxy-1").voucher_key()
    for name in ("proxy-1", "client-1"):
        with pytest.raises(SealedFileError, match="does not open with the key this node gets"):
            operator_keys(tmp_path, name).wallet()


def test_the_state_dir_and_its_secrets_are_owner_only(net: Net) -> None:
    state = net.state_dir
    dirs = [state, state / "logs", state / "chain", *(net.node_dir(n) for n in ("proxy-1", "client-1", "worker-1"))]
    assert {d: stat.S_IMODE(d.stat().st_mode) for d in dirs} == dict.fromkeys(dirs, 0o700)
    secrets = [state / "owner.key", state / "chain" / "chain.owner-key", state / "chain" / "faucet.key",
               *state.glob("*/platform-secret"), *state.glob("*/*.voucher-key"), *state.glob("*/*.wallet")]
    assert {p.name for p in secrets} >= {"platform-secret", "proxy-1.voucher-key", "proxy-1.wallet",
                                         "client-1.wallet", "worker-1.wallet"}
    assert {p: stat.S_IMODE(p.stat().st_mode) for p in secrets} == dict.fromkeys(secrets, 0o600)


def test_the_chain_file_holds_no_owner_seed(net: Net) -> None:
    chain = net.state_dir / "chain"
    seeds = [(chain / "chain.owner-key").read_bytes(), (net.state_dir / "owner.key").read_bytes()]
    for path in chain.glob("chain.sqlite*"):  # the database, its write-ahead log and shared memory
        data = path.read_bytes()
        for seed in seeds:
            assert seed not in data and seed.hex().encode() not in data, path
