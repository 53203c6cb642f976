"""The local ledger: every operation of the Ledger interface on the local chain, with exact amounts."""

from __future__ import annotations

import functools
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from cocoon.config import Prices
from cocoon.ledger.base import TON, LedgerError, LedgerRefused, Terms
from cocoon.ledger.chain import LocalChain
from cocoon.ledger.contracts import DEPOSIT_FEE, LOCAL_GLOBAL_ID, MAINNET_GLOBAL_ID, MIN_OP_VALUE, NOTIFY_VALUE, Tag
from cocoon.ledger.devnet import FUNDING, ProxySpec, prepare
from cocoon.ledger.local import LocalLedger
from cocoon.ledger.tvm import Tvm, TvmError, shared_tvm
from cocoon.ledger.vouchers import sign_voucher
from cocoon.ledger.wallet import Wallet
from tests.unit.ledger_vectors import fees

sign = functools.partial(sign_voucher, global_id=LOCAL_GLOBAL_ID)  # a local chain's vouchers

T0 = 1_800_000_000


class Net:
    """A root, a registered and staked proxy, a client and a worker, each wallet funded with 100 TON."""

    def __init__(self, path: Path, clock: list[float] | None = None, tvm: Tvm | None = None) -> None:
        self.clock = clock or [float(T0)]
        self.ledger = LocalLedger(path, clock=lambda: self.clock[0], tvm=tvm)
        self.key = Wallet(b"\x10" * 32)  # the proxy's voucher key
        self.operator, self.client, self.worker = (Wallet(bytes([i]) * 32) for i in (0x11, 0x12, 0x13))

    def setup(self) -> Net:
        for w in (self.operator, self.client, self.worker):
            self.ledger.fund(w, 100 * TON)
        self.proxy = self.ledger.register_proxy(self.operator.address, self.key.public_key, "127.0.0.1:10100")
        self.ledger.add_proxy_stake(self.operator, self.proxy, 10 * TON)
        self.channel = self.ledger.client_channel_address(self.proxy, self.client.address)
        self.worker_channel = self.ledger.worker_channel_address(self.proxy, self.worker.address)
        return self

    def wallet_change(self, wallet: Wallet, op: Any) -> tuple[int, Any]:
        before = self.ledger.balance(wallet.address)
        outcome = op()
        return self.ledger.balance(wallet.address) - before, outcome


@pytest.fixture
def net(tmp_path: Path) -> Net:
    return Net(tmp_path / "ledger.sqlite").setup()


def test_genesis_deploys_the_root_with_its_params_and_the_proxy_with_its_stake(tmp_path: Path) -> None:
    # the media prices too: the root holds them beside the token prices (get_media_prices)
    prices = Prices(price_per_token=30, worker_fee_per_token=25, max_coefficient=3000, price_per_media_second=7_000,
                    worker_fee_per_media_second=5_000)
    terms = Terms(client_close_delay=60, proxy_close_delay=120, min_client_stake=TON, min_proxy_stake=2 * TON)
    ledger = LocalLedger(tmp_path / "l.sqlite", default_prices=prices, terms=terms)
    params = ledger.root_params()
    assert (params.version, params.prices, params.terms) == (1, prices, terms)
    # the chain's global id, as its contracts see it (ConfigParam 19 of the config it runs)
    assert ledger.global_id() == ledger.chain.global_id == LOCAL_GLOBAL_ID
    again = LocalLedger(tmp_path / "l.sqlite", default_prices=Prices())  # an existing chain keeps its root
    assert again.root == ledger.root and again.root_params() == params
    with pytest.raises(LedgerError, match="is a chain with global id 1668244335, not -239"):
        LocalChain(tmp_path / "l.sqlite", global_id=MAINNET_GLOBAL_ID)
    key, owner = Wallet(b"\x01" * 32), Wallet(b"\x02" * 32)
    ledger.fund(owner, 5 * TON)
    proxy = ledger.register_proxy(owner.address, key.public_key, "proxy.example:8443")
    assert ledger.proxy_key(proxy) == key.public_key
    (entry,) = ledger.proxies()
    assert (entry.address, entry.pubkey, entry.owner, entry.endpoint) == \
        (proxy, key.public_key, owner.address, "proxy.example:8443")
    assert ledger.find_proxy("proxy.example:8443") == entry
    with pytest.raises(LedgerError, match=r"no proxy registered in root .* at elsewhere:1"):
        ledger.find_proxy("elsewhere:1")
    assert ledger.proxy_state(proxy).status == "new"
    ledger.add_proxy_stake(owner, proxy, 2 * TON)
    state = ledger.proxy_state(proxy)
    assert (state.status, state.stake, state.earned, state.open_clients) == ("active", 2 * TON, 0, 0)
    assert ledger.chain.audit().balanced


def test_a_channel_from_open_to_withdraw_with_exact_amounts_and_the_sandbox_fees(net: Net) -> None:
    L, F = net.ledger, fees()
    change, outcome = net.wallet_change(net.client, lambda: L.open_channel(net.client, net.proxy, 5 * TON, 2 * TON))
    assert change == -(5 * TON + DEPOSIT_FEE)
    assert outcome.fees == F["channel.open (deploy + deposit + register)"]
    s = L.channel_state(net.channel)
    assert (s.state, s.balance, s.stake, s.charged, s.withdrawable) == ("open", 5 * TON, 2 * TON, 0, 3 * TON)
    assert L.proxy_state(net.proxy).open_clients == 1
    assert L.deposit(net.client, net.channel, TON).fees == F["channel.deposit"]
    change, outcome = net.wallet_change(net.client, lambda: L.withdraw(net.client, net.channel, TON))
    assert change == TON - outcome.fees  # what was attached comes back less the fees
    # the sandbox's figure also counts its receiving wallet's own transaction; here wallets receive for free
    assert 0 < outcome.fees < F["channel.withdraw"]
    before = L.balance(net.client.address)
    with pytest.raises(LedgerRefused, match=r"withdraw refused by .*: exit code 105 \(below_stake") as refused:
        L.withdraw(net.client, net.channel, 3 * TON + 1)  # one nanoTON into the stake
    assert refused.value.exit_code == 105
    assert L.channel_state(net.channel).balance == 5 * TON
    assert before - L.balance(net.client.address) < MIN_OP_VALUE  # the attached value bounced back, less fees
    assert L.chain.audit().balanced


def test_charges_and_payouts_with_vouchers(net: Net) -> None:
    L, F = net.ledger, fees()
    L.open_channel(net.client, net.proxy, 5 * TON, 2 * TON)
    v1 = sign(net.key, Tag.CHARGE, net.channel, 1, TON)
    assert L.settle_charge(net.operator, v1).fees == F["channel.charge"]
    s, p = L.channel_state(net.channel), L.proxy_state(net.proxy)
    assert (s.balance, s.charged, s.seqno, p.earned) == (4 * TON, TON, 1, TON)
    with pytest.raises(LedgerRefused, match=r"exit code 103 \(old_voucher"):
        L.settle_charge(net.operator, v1)
    with pytest.raises(LedgerRefused, match=r"exit code 102 \(bad_signature"):
        L.settle_charge(net.operator, sign(net.worker, Tag.CHARGE, net.channel, 2, 2 * TON))
    with pytest.raises(LedgerRefused, match=r"exit code 104 \(insufficient_balance"):
        L.settle_charge(net.operator, sign(net.key, Tag.CHARGE, net.channel, 2, 6 * TON))
    # the worker channel is deployed by the first redeem; the proxy pays the worker's wallet
    payout = sign(net.key, Tag.PAYOUT, net.worker_channel, 1, TON // 2)
    change, outcome = net.wallet_change(net.worker, lambda: L.redeem(net.worker, net.proxy, payout))
    assert change == TON // 2 - outcome.fees
    change, outcome = net.wallet_change(net.worker, lambda: L.redeem(
        net.worker, net.proxy, sign(net.key, Tag.PAYOUT, net.worker_channel, 2, 8 * TON // 10)))
    assert change == 3 * TON // 10 - outcome.fees  # only the difference to what was paid
    assert L.worker_channel_state(net.worker_channel).paid == 8 * TON // 10
    assert L.proxy_state(net.proxy).paid_out == 8 * TON // 10
    with pytest.raises(LedgerError, match="the voucher is for"):
        L.redeem(net.client, net.proxy, payout)  # someone else's voucher
    assert L.chain.audit().balanced


def test_commits_only_move_forward(net: Net) -> None:
    L = net.ledger
    assert L.last_commit(net.proxy) == (0, bytes(32))
    assert L.commit(net.operator, net.proxy, 5, b"\x5a" * 32).fees == fees()["proxy.commit"]
    assert L.last_commit(net.proxy) == (5, b"\x5a" * 32)
    with pytest.raises(LedgerRefused, match="exit code 103"):
        L.commit(net.operator, net.proxy, 5, b"\x5b" * 32)
    with pytest.raises(LedgerRefused, match=r"exit code 101 \(unauthorized"):
        L.commit(net.client, net.proxy, 6, b"\x5b" * 32)
    assert L.proxy_state(net.proxy).commit_seqno == 5


def test_closing_without_the_proxy_returns_the_whole_balance_and_stake_after_the_delay(net: Net) -> None:
    L = net.ledger
    L.open_channel(net.client, net.proxy, 5 * TON, 2 * TON)
    L.settle_charge(net.operator, sign(net.key, Tag.CHARGE, net.channel, 1, TON))
    L.request_close(net.client, net.channel)
    state = L.channel_state(net.channel)
    assert state.state == "closing" and state.unlock_at == L.chain.now() + 3600
    with pytest.raises(LedgerRefused, match=r"exit code 106 \(too_early"):
        L.finalize_close(net.client, net.channel)
    L.advance(3600)
    channel_before, proxy_before = L.balance(net.channel), L.balance(net.proxy)
    since = L.chain.transactions()[-1][0]
    change, outcome = net.wallet_change(net.client, lambda: L.finalize_close(net.client, net.channel))
    proxy_tx_fees = {row[2]: row[8] for row in L.chain.transactions(since)}[net.proxy]
    # the proxy keeps exactly the notification's value less its own transaction; nothing stays on the channel;
    # the client gets everything else: the channel's whole balance less the fees the channel paid
    assert L.balance(net.proxy) - proxy_before == NOTIFY_VALUE - proxy_tx_fees
    assert L.balance(net.channel) == 0
    assert change == channel_before - (outcome.fees - proxy_tx_fees) - NOTIFY_VALUE
    assert change > state.balance == 4 * TON  # the balance (stake included) and the unused deposit fee
    p = L.proxy_state(net.proxy)
    assert (p.open_clients, p.earned) == (0, TON)  # the notification arrived: nothing stranded
    assert L.channel_state(net.channel).state == "closed"
    assert L.chain.audit().balanced


def test_a_final_voucher_closes_at_once(net: Net) -> None:
    L = net.ledger
    L.open_channel(net.client, net.proxy, 3 * TON, TON)
    final = sign(net.key, Tag.FINAL, net.channel, 1, TON // 4)
    change, _ = net.wallet_change(net.client, lambda: L.settle_charge(net.client, final))
    assert change > 3 * TON - TON // 4 - MIN_OP_VALUE
    assert L.channel_state(net.channel).state == "closed" and L.proxy_state(net.proxy).earned == TON // 4


def test_owner_changes_bump_the_version_and_inconsistent_prices_are_refused(net: Net) -> None:
    L = net.ledger
    v = L.refresh().version
    with pytest.raises(LedgerRefused, match=r"set_params refused .* exit code 113"):
        L.set_prices(Prices(price_per_token=10, worker_fee_per_token=11))
    with pytest.raises(LedgerRefused, match=r"set_params refused .* exit code 113"):
        L.set_prices(Prices(max_coefficient=0))
    assert L.refresh().version == v
    params = L.set_params(Prices(price_per_token=11, worker_fee_per_token=10), Terms(client_close_delay=5))
    assert params.version == v + 1 and params.terms.client_close_delay == 5
    other = LocalLedger(L.path)  # another process sees it at its next refresh
    assert other.refresh() == params


def test_an_operation_cut_short_leaves_no_trace(tmp_path: Path) -> None:
    class Crashing(Tvm):
        def __init__(self) -> None:
            self.calls = 0

        def run_transaction(self, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == 2:  # after the channel's transaction, before the proxy's
                raise TvmError("simulated crash")
            return shared_tvm(LOCAL_GLOBAL_ID).run_transaction(*args, **kwargs)

        def run_get_method(self, *args: Any, **kwargs: Any) -> Any:
            return shared_tvm(LOCAL_GLOBAL_ID).run_get_method(*args, **kwargs)

    net = Net(tmp_path / "ledger.sqlite").setup()
    crashing = Net(tmp_path / "ledger.sqlite", tvm=Crashing())
    before = net.ledger.chain.audit()
    with pytest.raises(TvmError, match="simulated crash"):
        crashing.ledger.open_channel(net.client, net.proxy, 5 * TON, 2 * TON)
    assert net.ledger.chain.audit() == before
    assert net.ledger.channel_state(net.channel).state == "new"
    assert net.ledger.balance(net.client.address) == 100 * TON


def test_errors_name_the_problem(net: Net) -> None:
    L = net.ledger
    with pytest.raises(LedgerError, match=r"there is no contract at .*the message bounced"):
        L.deposit(net.client, net.channel, TON)  # never opened
    poor = Wallet(b"\x77" * 32)
    with pytest.raises(LedgerError, match="holds 0 nanoTON"):
        L.open_channel(poor, net.proxy, 5 * TON, 2 * TON)
    with pytest.raises(LedgerError, match="only a payout voucher"):
        L.redeem(net.worker, net.proxy, sign(net.key, Tag.CHARGE, net.worker_channel, 1, 1))


def test_a_local_network_is_prepared_once(tmp_path: Path) -> None:
    spec = [ProxySpec("127.0.0.1:1", Wallet(b"\x01" * 32), Wallet(b"\x02" * 32))]
    client = Wallet(b"\x03" * 32)
    first = prepare(tmp_path, proxies=spec, parties=[client], prices=Prices(), terms=Terms())
    first.fund(client, TON)  # above the funding now
    first.close()
    again = prepare(tmp_path, proxies=spec, parties=[client], prices=Prices(price_per_token=1), terms=Terms())
    assert len(again.proxies()) == 1 and again.root_params().prices == Prices()  # the chain was kept
    assert again.balance(client.address) == FUNDING + TON  # prepare only tops up, never takes back
    assert again.proxy_state(again.proxies()[0].address).stake == Terms().min_proxy_stake


def test_the_owner_key_is_kept_out_of_the_chain_file_and_moved_out_of_an_older_one(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = LocalLedger(path)
    owner_file = tmp_path / "ledger.owner-key"
    seed = owner_file.read_bytes()
    assert stat.S_IMODE(owner_file.stat().st_mode) == 0o600 and ledger.owner.address == Wallet(seed).address
    ledger.close()
    # a chain written by an older version: the owner's seed in its meta table, no key file
    db = sqlite3.connect(path)
    db.execute("INSERT INTO meta VALUES ('owner_seed', ?)", (seed.hex(),))
    db.commit()
    db.close()
    owner_file.unlink()
    reopened = LocalLedger(path)
    assert owner_file.read_bytes() == seed and reopened.chain.get_meta("owner_seed") is None
    assert reopened.set_allowed_images("worker", ["ab" * 32]).version == 2  # the owner still acts
    reopened.close()
    for chain_file in tmp_path.glob("ledger.sqlite*"):
        data = chain_file.read_bytes()
        assert seed not in data and seed.hex().encode() not in data, chain_file
    owner_file.unlink()
    with pytest.raises(LedgerError, match=r"owner key .* is missing"):
        LocalLedger(path).set_prices(Prices(price_per_token=3))


def test_a_chain_made_by_another_version_of_the_contracts_is_refused_clearly(tmp_path: Path) -> None:
    net = Net(tmp_path / "ledger.sqlite").setup()
    net.ledger.chain.set_meta("root", net.proxy)  # a root whose code is not this version's
    net.ledger.close()
    with pytest.raises(LedgerError, match="runs other code than this version of cocoon's contracts"):
        LocalLedger(tmp_path / "ledger.sqlite")
