"""The proxy's billing: who pays for a client link (a channel its wallet proved it owns), and 402s that say why."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from cocoon.config import ClientConfig, Prices, ProxyConfig
from cocoon.core.errors import ApiError
from cocoon.core.usage import Usage
from cocoon.ledger.base import TON, LedgerError, Terms
from cocoon.ledger.books import RolledBack
from cocoon.ledger.devnet import ProxySpec, prepare
from cocoon.ledger.pricing import Bounds, max_cost
from cocoon.ledger.purse import ChannelPolicy, ClientPurse
from cocoon.ledger.vouchers import VoucherBook
from cocoon.nodekeys import KeysUnavailable, NodeKeys
from cocoon.proxy.billing import Account, Billing, open_ledger
from cocoon.wire.messages import ClientParams, Request

ENDPOINT = "127.0.0.1:10100"
TLS_KEY = b"\x55" * 32  # alice's RA-TLS key
MALLORY_TLS_KEY = b"\x66" * 32


@pytest.fixture
async def billing(tmp_path: Path) -> AsyncIterator[Billing]:
    cfg = ProxyConfig(name="proxy-1", state_dir=str(tmp_path), payments=True, port=10100)
    keys = NodeKeys("proxy", cfg)
    prepare(tmp_path, proxies=[ProxySpec(ENDPOINT, keys.wallet(), keys.voucher_key())],
            parties=[client_keys(tmp_path, name).wallet() for name in ("alice", "mallory")], prices=Prices(),
            terms=Terms()).close()
    b = Billing(cfg, open_ledger(cfg))
    await b.start(ENDPOINT)
    yield b
    await b.stop()
    b.ledger.close()


def client_keys(state: Path, name: str) -> NodeKeys:
    return NodeKeys("client", ClientConfig(name=name, state_dir=str(state)))


def open_purse(billing: Billing, name: str) -> ClientPurse:
    state = billing.cfg.state_path
    assert billing.settlement is not None
    policy = ChannelPolicy(deposit=3 * TON, stake=2 * TON, top_up_below=TON, top_up_to=3 * TON)
    p = ClientPurse(billing.ledger, client_keys(state, name).wallet(), billing.settlement.proxy,
                    VoucherBook(state / f"{name}.vouchers.sqlite"), policy)
    p.ensure_open()
    return p


def claim(p: ClientPurse, tls_key: bytes) -> ClientParams:
    return ClientParams(owner=p.wallet.address, channel=p.channel, nonce=p.nonce, wallet_key=p.wallet.public_key,
                        proof=p.proof(tls_key))


def request(max_tokens: int | None = None, body: bytes = b"{}", request_id: str = "r1", choices: int = 1) -> Request:
    return Request(call_id=1, endpoint="chat", model="m", body=body, stream=False, include_usage=False, deadline=0,
                   max_tokens=max_tokens, request_id=request_id, choices=choices)


async def test_a_client_pays_through_the_channel_its_wallet_signed_for(billing: Billing) -> None:
    alice = open_purse(billing, "alice")
    account = await billing.open_account(TLS_KEY, claim(alice, TLS_KEY))
    assert (account.id, account.channel, account.refusal) == (alice.channel, alice.channel, None)
    assert billing.books.available(alice.channel) == 2 * TON  # the stake, not the 3 TON balance
    req = request()
    # the cap reserved for is returned, for the worker to hold the engine to; the request is left as it was
    res = billing.admit(req, account, 1000)
    assert res.max_tokens == billing.cfg.default_max_tokens and req.max_tokens is None
    assert res.bounds == Bounds(prompt_tokens=2, completion_tokens=res.max_tokens)
    assert billing.books.available(alice.channel) == 2 * TON - res.max_cost
    assert billing.admit(request(max_tokens=7, request_id="r3"), account, 1000).max_tokens == 7
    with pytest.raises(ApiError) as refused:
        billing.admit(request(max_tokens=10**9, request_id="r2"), account, 1000)
    assert (refused.value.status, refused.value.code) == (402, "insufficient_funds")
    assert "the client's channel covers" in refused.value.message and "top up" in refused.value.message


@pytest.mark.parametrize("forge", ["other_wallet_signs", "own_wallet_other_channel", "other_tls_key", "wrong_nonce",
                                   "no_channel"])
async def test_a_client_cannot_pay_with_a_channel_it_does_not_own(billing: Billing, forge: str) -> None:
    alice, mallory = open_purse(billing, "alice"), open_purse(billing, "mallory")
    honest = claim(alice, TLS_KEY)
    forged = {
        # mallory names alice's channel and proves it with her own wallet
        "other_wallet_signs": ClientParams(owner=alice.wallet.address, channel=alice.channel,
                                           wallet_key=mallory.wallet.public_key,
                                           proof=mallory.wallet.sign(b"cocoon-channel-claim:" + alice.channel.encode()
                                                                     + b":" + MALLORY_TLS_KEY)),
        # mallory names herself as the owner, with her own key and a valid proof, of alice's channel: only the
        # channel's address (derived from its owner) shows it is not hers
        "own_wallet_other_channel": ClientParams(owner=mallory.wallet.address, channel=alice.channel,
                                                 wallet_key=mallory.wallet.public_key,
                                                 proof=mallory.wallet.sign(b"cocoon-channel-claim:"
                                                                           + alice.channel.encode() + b":"
                                                                           + MALLORY_TLS_KEY)),
        # mallory replays alice's genuine claim from another RA-TLS key
        "other_tls_key": honest,
        "wrong_nonce": ClientParams(owner=alice.wallet.address, channel=alice.channel, nonce=1,
                                    wallet_key=alice.wallet.public_key, proof=honest.proof),
        "no_channel": ClientParams(),
    }[forge]
    await billing.open_account(TLS_KEY, honest)  # alice is a known, paying client
    account = await billing.open_account(MALLORY_TLS_KEY, forged)
    assert account.channel is None and account.refusal
    with pytest.raises(ApiError) as refused:
        billing.admit(request(max_tokens=1), account, 1000)
    assert (refused.value.status, refused.value.code) == (402, "no_payment_channel")
    assert refused.value.message.startswith("this client has no usable payment channel with the proxy: ")
    assert billing.books.available(alice.channel) == 2 * TON  # alice's credit is untouched


def test_a_proxy_without_a_key_service_signs_with_a_per_start_key_only_while_payments_are_off(tmp_path: Path) -> None:
    off = ProxyConfig(name="proxy-1", state_dir=str(tmp_path), attestation="tdx", payments=False)
    first, second = Billing(off, open_ledger(off)), Billing(off, open_ledger(off))
    try:
        assert first.key.public_key != second.key.public_key  # nothing stored: no voucher leaves the books
        assert not (tmp_path / "proxy-1.voucher-key").exists()
    finally:
        for b in (first, second):
            b.books.close()
            b.ledger.close()
    on = ProxyConfig(name="proxy-1", state_dir=str(tmp_path), attestation="tdx", payments=True)
    ledger = open_ledger(on)
    with pytest.raises(KeysUnavailable, match="no key service configured on this platform"):
        Billing(on, ledger)
    ledger.close()


async def test_a_request_id_gets_one_answer_and_its_reservation_covers_every_choice(billing: Billing) -> None:
    """Issue 15 items 1 and 5: an id in flight or settled is refused before anything is reserved; an id that ended
    unanswered may be used again; a request generating 8 choices reserves 8 completions."""
    alice = open_purse(billing, "alice")
    account = await billing.open_account(TLS_KEY, claim(alice, TLS_KEY))
    prices = billing.ledger.root_params().prices
    res = billing.admit(request(max_tokens=10, choices=8), account, 1000)
    assert res.bounds == Bounds(prompt_tokens=2, completion_tokens=80)
    assert res.max_cost == max_cost(res.bounds, prices, 1000)
    for refused_req, status, code, param in [(request(max_tokens=10), 409, "duplicate_request_id", "request_id"),
                                             (request(request_id=""), 400, "invalid_request", "request_id"),
                                             (request(request_id="x" * 65), 400, "invalid_request", "request_id"),
                                             (request(request_id="r 1"), 400, "invalid_request", "request_id"),
                                             (request(request_id="r9", choices=0), 400, "invalid_value", "choices")]:
        with pytest.raises(ApiError) as refused:
            billing.admit(refused_req, account, 1000)
        assert (refused.value.status, refused.value.code, refused.value.param) == (status, code, param)
    assert billing.books.available(alice.channel) == 2 * TON - res.max_cost  # nothing more reserved
    billing.end(res)  # ended without an answer
    again = billing.admit(request(max_tokens=10), account, 1000)
    settled = billing.settle(again, "w", "worker-1", "m", Usage(prompt_tokens=2, completion_tokens=10), 1000)
    assert settled.beyond == () and billing.summary()["usage_beyond_bounds"] == 0
    billing.end(again)
    with pytest.raises(ApiError) as refused:
        billing.admit(request(max_tokens=10), account, 1000)
    assert refused.value.status == 409
    assert billing.books.available(alice.channel) == 2 * TON - settled.charge.client_cost


async def test_due_charges_are_claimed_in_the_background_round_and_at_stop(tmp_path: Path) -> None:
    """A channel owing the proxy is claimed once its charges reach the threshold, whether or not its client is
    connected; at stop, everything is claimed and the books' state committed."""
    cfg = ProxyConfig(name="proxy-1", state_dir=str(tmp_path), payments=True, port=10100, claim_threshold_nanoton=1)
    keys = NodeKeys("proxy", cfg)
    prepare(tmp_path, proxies=[ProxySpec(ENDPOINT, keys.wallet(), keys.voucher_key())],
            parties=[client_keys(tmp_path, "alice").wallet()], prices=Prices(), terms=Terms()).close()
    billing = Billing(cfg, open_ledger(cfg))
    await billing.start(ENDPOINT)
    try:
        assert billing.settlement is not None
        alice = open_purse(billing, "alice")
        account = await billing.open_account(TLS_KEY, claim(alice, TLS_KEY))
        res = billing.admit(request(max_tokens=10), account, 1000)
        cost = billing.settle(res, "w", "worker-1", "m", Usage(prompt_tokens=2, completion_tokens=10),
                              1000).charge.client_cost
        billing.end(res)
        assert account in billing.accounts
        billing.close_account(account)  # gone: its channel still owes the proxy
        assert account not in billing.accounts
        assert cost > 0 and alice.state().charged == 0
        Billing._poll(billing.settlement, set())
        assert alice.state().charged == cost
        res = billing.admit(request(max_tokens=10, request_id="r2"), account, 1000)
        billing.settle(res, "w", "worker-1", "m", Usage(prompt_tokens=2, completion_tokens=10), 1000)
        billing.end(res)
    finally:
        await billing.stop()
        billing.ledger.close()
    with pytest.raises(sqlite3.ProgrammingError):  # stopped: the books are closed
        billing.books.state()
    ledger = open_ledger(cfg)
    try:
        assert ledger.channel_state(alice.channel).charged == 2 * cost
        assert ledger.last_commit(billing.settlement.proxy)[0] == 2
    finally:
        ledger.close()
    # books that lost what was committed on chain refuse to serve
    (tmp_path / "proxy-books.sqlite").unlink()
    restarted = Billing(cfg, open_ledger(cfg))
    try:
        with pytest.raises(RolledBack, match="the books are at seqno 0 but this proxy committed seqno 2"):
            await restarted.start(ENDPOINT)
        with pytest.raises(LedgerError, match=r"no proxy contract registered in root .* at 127\.0\.0\.1:1 "):
            await restarted.start("127.0.0.1:1")  # registered, but at another endpoint
    finally:
        restarted.books.close()
        restarted.ledger.close()


async def test_the_background_round_claims_re_reads_and_commits_at_its_interval(tmp_path: Path) -> None:
    cfg = ProxyConfig(name="proxy-1", state_dir=str(tmp_path), payments=True, port=10100, claim_threshold_nanoton=1,
                      chain_poll_s=0.01, commit_interval_s=3600)
    keys = NodeKeys("proxy", cfg)
    prepare(tmp_path, proxies=[ProxySpec(ENDPOINT, keys.wallet(), keys.voucher_key())],
            parties=[client_keys(tmp_path, n).wallet() for n in ("alice", "bob", "carol")], prices=Prices(),
            terms=Terms()).close()
    billing = Billing(cfg, open_ledger(cfg))
    await billing.start(ENDPOINT)
    task = None
    try:
        assert billing.settlement is not None
        proxy = billing.settlement.proxy
        alice, bob = open_purse(billing, "alice"), open_purse(billing, "bob")
        account = await billing.open_account(TLS_KEY, claim(alice, TLS_KEY))
        await billing.open_account(MALLORY_TLS_KEY, claim(bob, MALLORY_TLS_KEY))
        assert account.limits_key == account.wallet != account.id  # limits count per paying wallet
        await billing.open_worker("worker-key", "")  # no wallet named: no payout channel
        carol = client_keys(tmp_path, "carol").wallet()
        await billing.open_worker("worker-key", carol.address)
        workers = billing.books.summary()["workers"]
        assert workers["worker-key"]["channel"] == billing.ledger.worker_channel_address(proxy, carol.address)
        res = billing.admit(request(max_tokens=10), account, 1000)
        with pytest.raises(dataclasses.FrozenInstanceError):
            res.max_cost = 0  # type: ignore[misc]
        settled = billing.settle(res, "worker-key", "worker-1", "m", Usage(prompt_tokens=5, completion_tokens=99),
                                 1000)
        billing.end(res)
        assert settled.beyond and billing.summary()["usage_beyond_bounds"] == 1
        billing.ledger.deposit(bob.wallet, bob.channel, TON)  # bob, connected and owing nothing, tops up

        def bobs_balance() -> int:
            return billing.books.summary()["clients"][bob.channel]["balance_nanoton"]

        task = asyncio.create_task(billing.run())
        for _ in range(500):  # the round claims what alice owes and reads bob's channel again
            if alice.state().charged == settled.charge.client_cost and bobs_balance() == 4 * TON:
                break
            await asyncio.sleep(0.01)
        assert alice.state().charged == settled.charge.client_cost and bobs_balance() == 4 * TON
        await asyncio.sleep(0.2)  # more rounds, all within the commit interval: they commit nothing
        assert billing.ledger.last_commit(proxy)[0] == 0
        assert billing.next_commit_at is not None and billing.next_commit_at > time.time() + 3000
        task.cancel()
        billing.cfg = msgspec.structs.replace(cfg, commit_interval_s=0.05)
        task = asyncio.create_task(billing.run())
        await asyncio.sleep(0)  # the round starts: its first commit is due an interval from now
        first_due = billing.next_commit_at
        assert first_due is not None
        for _ in range(500):
            if billing.ledger.last_commit(proxy)[0] == 1:
                break
            await asyncio.sleep(0.01)
        assert billing.ledger.last_commit(proxy)[0] == 1
        # the next one is an interval after this commit, itself due no earlier than `first_due` (no wall-clock
        # comparison: a loaded machine may reach this line after the next commit is due)
        assert billing.next_commit_at >= first_due + 0.05
    finally:
        if task is not None:
            task.cancel()
        await billing.stop()
        billing.ledger.close()
    assert Account("k").limits_key == "k"  # no wallet: the link's key


async def test_a_request_refused_for_money_frees_its_id(billing: Billing) -> None:
    alice = open_purse(billing, "alice")
    account = await billing.open_account(TLS_KEY, claim(alice, TLS_KEY))
    with pytest.raises(ApiError) as refused:
        billing.admit(request(max_tokens=10**9, request_id="r1"), account, 1000)
    assert refused.value.status == 402
    billing.end(billing.admit(request(max_tokens=10, request_id="r1"), account, 1000))  # not a duplicate


async def test_a_media_job_reserves_its_declared_seconds_and_is_charged_what_it_processed(billing: Billing) -> None:
    alice = open_purse(billing, "alice")
    account = await billing.open_account(TLS_KEY, claim(alice, TLS_KEY))
    prices = billing.ledger.root_params().prices
    job = Request(call_id=1, endpoint="media", model="media", body=b"{}", stream=True, include_usage=False,
                  deadline=0, request_id="m1", parts=True, max_media_ms=90_000)
    res = billing.admit(job, account, 2000)
    assert (res.bounds, res.max_tokens) == (Bounds(0, 0, media_ms=90_000), None)
    assert res.max_cost == 90 * prices.price_per_media_second * 2  # 90 s at twice the list price
    assert billing.books.available(alice.channel) == 2 * TON - res.max_cost
    settled = billing.settle(res, "w" * 64, "w1", "media", Usage(media_ms=2_500), 1000)
    assert settled.charge.client_cost == 2_500 * prices.price_per_media_second // 1000
    assert settled.charge.worker_fee == 2_500 * prices.worker_fee_per_media_second // 1000
    billing.end(res)
    # a report beyond what was reserved is charged at the reservation
    res = billing.admit(msgspec.structs.replace(job, request_id="m2", max_media_ms=1_000), account, 1000)
    held = billing.settle(res, "w" * 64, "w1", "media", Usage(media_ms=5_000), 1000)
    assert held.usage == Usage(media_ms=1_000) and held.beyond == ("media_ms",)
    assert held.charge.client_cost == res.max_cost
