"""The proxy's money: its books (ledger/books.py), its clients' channels and workers' payouts, and settlement.

The request path touches only the books (the request id taken and an in-memory reservation before, one SQLite
transaction and two signatures after); everything that reads or writes the chain runs in threads, off the event
loop: verifying a client's channel when it connects, re-reading channels, claiming charges and committing the
books' state. With `payments` off (tests, development) the books still record every charge and every request id,
but no channel is needed, nothing is reserved and no voucher is signed.

What a request can produce (`Bounds`) comes from its envelope, never from parsing its body (which the proxy only
relays): the prompt's tokens from the body's length (each token is at least one byte of the JSON holding it), the
completion's from the cap times the choices (the worker holds the engine to both).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from cocoon.config import ProxyConfig
from cocoon.core.errors import ApiError, ErrorCode
from cocoon.core.ids import is_request_id
from cocoon.core.usage import Usage
from cocoon.ledger.base import Ledger, LedgerError
from cocoon.ledger.books import DuplicateRequest, PaymentRequired, ProxyBooks, Settled
from cocoon.ledger.network import open_ledger as open_chain
from cocoon.ledger.onchain import OnChainLedger
from cocoon.ledger.pricing import Bounds, max_cost
from cocoon.ledger.purse import verify_channel_proof
from cocoon.ledger.settlement import ProxySettlement, SettlementPolicy
from cocoon.ledger.vouchers import VoucherError
from cocoon.ledger.wallet import Wallet, raw_address
from cocoon.nodekeys import KeysUnavailable, NodeKeys
from cocoon.wire.messages import MEDIA_ENDPOINT, ClientParams, Request

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Account:
    """Who pays for a client link's requests: its verified channel, or its key when payments are off."""

    id: str
    channel: str | None = None
    refusal: str | None = None  # why this client cannot be served on credit (no or invalid channel)
    wallet: str | None = None  # the wallet that proved it pays through `channel`

    @property
    def limits_key(self) -> str:
        """What per-client limits (proxy/limits.py) count against: the wallet paying through a verified channel,
        which presents itself under as many RA-TLS keys as it likes (and opens another channel only with another
        stake). Without one, the link's RA-TLS key, which a client mints freely: with payments off, a client
        gets fresh limits with each key; with payments on, such a client is refused (402) anyway."""
        return self.wallet or self.id


@dataclass(frozen=True)
class Reservation:
    """One request as admitted: its id for its paying party, what it can produce, and the most it can cost."""

    request_id: str
    account: Account
    bounds: Bounds
    max_tokens: int | None  # the output cap of each choice, which the worker holds the engine to (None: media)
    coefficient: int  # the dearest worker it may be routed to: what `max_cost` was computed at
    max_cost: int  # held against the client's channel when payments are on


class Billing:
    def __init__(self, cfg: ProxyConfig, ledger: OnChainLedger) -> None:
        self.cfg = cfg
        self.ledger = ledger
        state = cfg.state_path
        # the voucher key and operator wallet are sealed to this proxy's role, image and name
        self.keys = NodeKeys("proxy", cfg)
        try:
            self.key = self.keys.voucher_key()
        except KeysUnavailable:
            if cfg.payments:
                raise
            self.key = Wallet(os.urandom(32))  # payments off: no voucher leaves the books, a per-start key does
        self.books = ProxyBooks(state / "proxy-books.sqlite", self.key, ledger.global_id())
        self.settlement: ProxySettlement | None = None
        self.accounts: set[Account] = set()
        self.beyond_bounds = 0  # answers whose reported usage went beyond their bounds
        self.next_commit_at: float | None = None  # unix time of the next commit of the books' state (dashboards)

    async def start(self, endpoint: str) -> None:
        """With payments on: find this proxy's contract (registered in the root at `endpoint` with our voucher key)
        and refuse to serve if the books are behind what it committed on chain."""
        if not self.cfg.payments:
            return
        self.settlement = await asyncio.to_thread(self._settlement, endpoint)
        log.info("books match the chain", extra={"fields": {"proxy_contract": self.settlement.proxy,
                                                            "seqno": self.books.state()[0]}})

    def _settlement(self, endpoint: str) -> ProxySettlement:
        entry = next((e for e in self.ledger.proxies() if e.pubkey == self.key.public_key and e.endpoint == endpoint),
                     None)
        if entry is None:
            raise LedgerError(f"no proxy contract registered in root {self.ledger.root} for this proxy's voucher key "
                              f"at {endpoint} (cocoon up registers it: ledger/devnet.py)")
        operator = self.keys.wallet()
        policy = SettlementPolicy(client_claim_nanoton=self.cfg.claim_threshold_nanoton)
        settlement = ProxySettlement(self.ledger, self.books, operator, entry.address, policy)
        settlement.check_rollback()
        return settlement

    # ---- links ----
    async def open_account(self, tls_key: bytes, params: ClientParams | None) -> Account:
        if self.settlement is None:
            account = Account(tls_key.hex())
        else:
            account = await asyncio.to_thread(self._verified_account, self.settlement, tls_key,
                                               params or ClientParams())
        self.accounts.add(account)
        return account

    def _verified_account(self, settlement: ProxySettlement, tls_key: bytes, p: ClientParams) -> Account:
        ledger: Ledger = settlement.ledger
        try:
            if not p.channel:
                raise VoucherError("the client named no payment channel")
            expected = ledger.client_channel_address(settlement.proxy, p.owner, p.nonce)
            if expected != p.channel:
                raise VoucherError(f"channel {p.channel} is not wallet {p.owner}'s channel #{p.nonce} with this "
                                   f"proxy ({expected})")
            if ledger.wallet_key(p.owner) != p.wallet_key:
                raise VoucherError(f"the key presented does not control wallet {p.owner}")
            verify_channel_proof(p.channel, tls_key, p.wallet_key, p.proof)
            settlement.sync_client(p.channel, p.channel)
            wallet = raw_address(p.owner)  # one spelling per wallet: its limits are counted under it
        except (VoucherError, LedgerError, ValueError) as exc:
            log.warning("client without a usable payment channel", extra={"fields": {"reason": str(exc)}})
            return Account(tls_key.hex(), refusal=str(exc))
        return Account(p.channel, channel=p.channel, wallet=wallet)

    def close_account(self, account: Account) -> None:
        self.accounts.discard(account)

    async def open_worker(self, worker_key: str, owner: str) -> None:
        """Give the worker a payout channel (and so vouchers) when it names a wallet."""
        if self.settlement is None or not owner:
            return
        try:
            await asyncio.to_thread(self.settlement.sync_worker, worker_key, owner)
        except (LedgerError, ValueError) as exc:
            log.warning("worker without a payout channel", extra={"fields": {"owner": owner, "reason": str(exc)}})

    # ---- the request path ----
    def admit(self, req: Request, account: Account, coefficient: int, body_bytes: int | None = None) -> Reservation:
        """Before any work: take the request's id for its paying party, bound what it can produce (its prompt by
        `body_bytes`, the body's plaintext length: `len(req.body)` unless it is sealed), and hold its maximum cost
        at `coefficient`. Raises a 400 (no usable id or choices), 409 (the id is in flight or was
        answered before) or 402 (the channel cannot cover it)."""
        request_id = req.request_id
        if not is_request_id(request_id):
            raise ApiError(400, "a request needs an id of 1 to 64 letters, digits and `._:-` (the client's API makes "
                                "one per request)", code=ErrorCode.INVALID_REQUEST, param="request_id")
        if req.choices < 1:
            raise ApiError(400, f"a request generates at least one choice, not {req.choices}",
                           code=ErrorCode.INVALID_VALUE, param="choices")
        try:
            self.books.begin(request_id, account.id)
        except DuplicateRequest as exc:
            raise ApiError(409, str(exc), code=ErrorCode.DUPLICATE_REQUEST_ID, param="request_id") from None
        try:
            return self._reserve(req, account, coefficient, len(req.body) if body_bytes is None else body_bytes)
        except BaseException:
            self.books.end(request_id, account.id)
            raise

    def _reserve(self, req: Request, account: Account, coefficient: int, body_bytes: int) -> Reservation:
        # the request's own cap, or `default_max_tokens` when it set none: the worker holds the engine to it, with
        # payments off too (the books still record every charge, held to these bounds)
        cap: int | None
        if req.endpoint == MEDIA_ENDPOINT:  # a media job: the input it declared it may process, and no tokens
            cap, bounds = None, Bounds(prompt_tokens=0, completion_tokens=0, media_ms=req.max_media_ms)
        else:
            cap = req.max_tokens if req.max_tokens is not None else self.cfg.default_max_tokens
            bounds = Bounds(prompt_tokens=body_bytes, completion_tokens=cap * req.choices)
        cost = max_cost(bounds, self.ledger.root_params().prices, coefficient)
        res = Reservation(req.request_id, account, bounds, cap, coefficient, cost)
        if self.settlement is None:
            return res
        if account.refusal is not None:
            raise ApiError(402, f"this client has no usable payment channel with the proxy: {account.refusal}",
                           type="payment_required", code=ErrorCode.NO_PAYMENT_CHANNEL)
        try:
            self.books.reserve(req.request_id, account.id, cost)
        except PaymentRequired as exc:
            raise ApiError(402, str(exc), type="payment_required", code=ErrorCode.INSUFFICIENT_FUNDS) from None
        return res

    def end(self, res: Reservation) -> None:
        """The request is over, answered or not: its reservation is released and its id freed unless settled."""
        self.books.end(res.request_id, res.account.id)

    def pay_check(self, check_id: str, worker_key: str, model: str, usage: Usage, coefficient: int,
                  bounds: Bounds | None) -> Settled:
        """A spot check's re-run, paid to its worker as the proxy's own cost (`ProxyBooks.pay_check`): no client
        is charged, the worker gets a payout voucher like for any answer."""
        return self.books.pay_check(check_id, worker_key, model, usage, self.ledger.root_params().prices,
                                    coefficient, bounds)

    def settle(self, res: Reservation, worker_key: str, worker_name: str, model: str, usage: Usage,
               coefficient: int) -> Settled:
        """Charge one answer: the worker's report held to the request's bounds (anything beyond is logged and
        counted, and `Settled.beyond` names it so the caller can hold it against the worker)."""
        settled = self.books.settle(res.request_id, res.account.id, worker_key, model, usage,
                                    self.ledger.root_params().prices, coefficient, res.bounds)
        if settled.beyond:
            self.beyond_bounds += 1
            log.warning("a worker reported usage beyond what the request could produce; charged at the bound",
                        extra={"fields": {"request_id": res.request_id, "worker": worker_name,
                                          "reported": msgspec.structs.asdict(usage),
                                          "bounds": res.bounds._asdict(), "beyond": list(settled.beyond),
                                          "charged_nanoton": settled.charge.client_cost}})
        return settled

    # ---- settlement, in the background ----
    async def run(self) -> None:
        """Re-read the channels of connected clients and of those owing the proxy, claim what is due, commit
        the books' state every interval."""
        settlement = self.settlement
        if settlement is None:
            return
        last_commit = time.monotonic()
        self.next_commit_at = time.time() + self.cfg.commit_interval_s
        while True:
            await asyncio.sleep(self.cfg.chain_poll_s)
            try:
                channels = {a.channel for a in self.accounts if a.channel}
                await asyncio.to_thread(self._poll, settlement, channels)
                if time.monotonic() - last_commit >= self.cfg.commit_interval_s:
                    last_commit = time.monotonic()
                    self.next_commit_at = time.time() + self.cfg.commit_interval_s
                    await asyncio.to_thread(settlement.commit_due)
            except Exception:  # a background loop must outlive any one failed round: the next one retries
                log.exception("settlement round failed")

    @staticmethod
    def _poll(settlement: ProxySettlement, connected: set[str]) -> None:
        # channels owing the proxy are watched even when their client is away: one that starts closing must
        # be claimed before its close delay ends
        owing = {client for client, *_ in settlement.books.unclaimed()}
        for channel in connected | owing:
            settlement.sync_client(channel, channel)
        settlement.claim_due()

    async def stop(self) -> None:
        """Claim and commit what the books hold before the process ends."""
        if self.settlement is not None:
            try:
                await asyncio.to_thread(self._final, self.settlement)
            except (LedgerError, OSError) as exc:
                log.warning("final settlement failed", extra={"fields": {"error": str(exc)}})
        self.books.close()

    @staticmethod
    def _final(settlement: ProxySettlement) -> None:
        settlement.claim_due()
        settlement.commit_due()

    def summary(self) -> dict[str, Any]:
        return {**self.books.summary(), "usage_beyond_bounds": self.beyond_bounds}


def open_ledger(cfg: ProxyConfig) -> OnChainLedger:
    """The proxy's chain (ledger/network.py); a local chain created here gets the config's prices."""
    return open_chain(cfg, default_prices=cfg.prices)
