"""The client's money: a funded payment channel with each of its proxies (opened at start, topped up when low),
the charge vouchers the proxies sign (the newest kept), and two checks of every answer's charge:

- its cost is at most its usage at the prices on chain times the worker's coefficient (the proxy names it), and
  that coefficient is within this client's cap;
- the vouchers charge no more than the answers received (client/audit.py, whatever order answers end in), and
  only answers backed by a receipt this client checked count (client/receipts.py): a voucher is accepted up to the
  charges its receipts back, anything beyond is an over-charge. The one exception is a stream broken off after its
  first token, which no worker could sign for: the proxy charges it by its own count, and the client saw it break.

Every charge seen is kept with its receipt (`ReceiptBook`): the evidence `cocoon ledger dispute` exports.

Chain operations run in threads; checking and storing a voucher (a signature check and one SQLite write) is
done inline as each answer ends.
"""

from __future__ import annotations

import asyncio
import logging

from cocoon.client.audit import ChargeAudit
from cocoon.client.receipts import ReceiptBook, receipts_path
from cocoon.config import ClientConfig, Prices
from cocoon.ledger.base import LedgerError
from cocoon.ledger.devnet import vouchers_path
from cocoon.ledger.network import open_ledger
from cocoon.ledger.pricing import price_request
from cocoon.ledger.purse import ChannelPolicy, ClientPurse
from cocoon.ledger.receipts import Receipt
from cocoon.ledger.vouchers import Voucher, VoucherBook, VoucherError
from cocoon.nodekeys import NodeKeys
from cocoon.wire.messages import ClientParams, ResponseEnd, ResponseError

log = logging.getLogger(__name__)


class ClientPayments:
    def __init__(self, cfg: ClientConfig, tls_key: bytes) -> None:
        state = cfg.state_path
        self.cfg = cfg
        self.tls_key = tls_key
        self.ledger = open_ledger(cfg)  # on the network its config names (or it refuses to start)
        self.wallet = NodeKeys("client", cfg).wallet()  # sealed to this client's role (and image) and name
        self.vouchers = VoucherBook(vouchers_path(state, cfg.name))
        self.receipts = ReceiptBook(receipts_path(state, cfg.name))
        self.unbacked_answers = 0  # answers charged without a receipt that holds: their charge is not accepted
        self.unbacked_nanoton = 0
        # present while this client runs, and after a run that may have been charged for answers it never saw
        self._in_doubt = vouchers_path(state, cfg.name).with_suffix(".in-doubt")
        self.policy = ChannelPolicy(deposit=cfg.deposit_nanoton, stake=cfg.stake_nanoton,
                                    top_up_below=cfg.top_up_below_nanoton, top_up_to=cfg.top_up_to_nanoton)
        self.purses: dict[str, ClientPurse] = {}  # by proxy address (host:port); grows as proxies are found
        self._inherited_s: float | None = None
        self.balance_nanoton = 0  # what the channels still hold for new requests, as last read
        self.audit = ChargeAudit()
        self.refused_vouchers = 0  # invalid, or inconsistent with the voucher kept
        self.superseded_vouchers = 0  # signed before the one kept, arriving after it: nothing wrong
        self.overpriced_answers = 0  # cost above usage × prices × coefficient, or a coefficient above the cap
        self.overpriced_nanoton = 0  # what those answers cost beyond that
        # the root's prices, the current ones and the ones before: a proxy may settle at either around a change
        self._prices: tuple[Prices, ...] = (self.ledger.root_params().prices,)

    def open(self, addresses: list[str] | None = None) -> None:
        """Open and fund a channel with each of these proxies (by default the configured ones) that the root
        registers (blocking, before any request); proxies found later get theirs before their first link
        (`ensure_channel`)."""
        # an earlier run's requests may be charged until their deadline (and a little settling after it)
        self._inherited_s = self.cfg.request_timeout_s + 30 if self._in_doubt.exists() else None
        self._in_doubt.touch()
        for address in self.cfg.proxy_addresses if addresses is None else addresses:
            try:
                self.ensure_channel(address)
            except LedgerError as exc:
                log.warning("no payment channel with this proxy", extra={"fields": {"proxy": address,
                                                                                    "reason": str(exc)}})
        self._refresh()

    def ensure_channel(self, address: str) -> None:
        """A funded channel with the proxy registered at `address` (blocking; LedgerError if none is)."""
        if address in self.purses:
            return
        proxy = self.ledger.find_proxy(address)
        purse = ClientPurse(self.ledger, self.wallet, proxy.address, self.vouchers, self.policy)
        state = purse.ensure_open()
        self.audit.open(purse.channel, purse.latest(), inherited_s=self._inherited_s)
        self.purses[address] = purse
        log.info("payment channel open", extra={"fields": {"proxy": address, "channel": purse.channel,
                                                           "balance": state.balance, "stake": state.stake}})
        self._refresh()

    def client_params(self, address: str) -> ClientParams:
        purse = self.purses.get(address)
        if purse is None:
            return ClientParams(owner=self.wallet.address, wallet_key=self.wallet.public_key)
        return ClientParams(owner=self.wallet.address, channel=purse.channel, nonce=purse.nonce,
                            wallet_key=self.wallet.public_key, proof=purse.proof(self.tls_key))

    def begin(self, request_id: str) -> int:
        """A request is about to be sent; its ticket, for `end`."""
        return self.audit.begin(request_id)

    def unsent(self, ticket: int) -> None:
        """Request `ticket` could not be sent."""
        self.audit.end(ticket, seen=True)

    def disown(self, ticket: int) -> None:
        """Request `ticket`'s answer was refused (a sealed answer changed on the way): this client accepts no charge
        for it, so a voucher charging for it counts as unexplained."""
        self.audit.end(ticket, seen=True)

    def end(self, ticket: int, last: ResponseEnd | ResponseError | None, receipt: Receipt | None = None, *,
            checked: bool = False) -> None:
        """Request `ticket` ended with `last` from the proxy (None: its end never came: a lost link, a client that
        hung up). Check its charge and keep its voucher. `checked`: the caller checked the answer's receipt
        (client/receipts.py), which is `receipt`, or None when it did not hold: the charge is accepted only with
        one, and both are kept as evidence. A caller that cannot check receipts (a relay paying for answers sealed
        to someone else) leaves the charge to the other checks. A ticket already ended is ignored."""
        if last is None:
            self.audit.end(ticket, seen=False)
            return
        request_id = self.audit.request_id(ticket)
        if last.cost_nanoton:
            self._check_price(request_id, last)
        channel, valid = None, None
        if last.voucher is not None:
            channel, valid = self._keep(request_id, last.voucher)
        cost = last.cost_nanoton
        if checked and receipt is None and isinstance(last, ResponseEnd) and cost:
            # charged for an answer no receipt backs: the voucher is not accepted for it (the audit counts it as
            # unexplained, an over-charge once the voucher is checked)
            self.unbacked_answers += 1
            self.unbacked_nanoton += cost
            log.error("an answer was charged without a receipt that holds; its charge is contested",
                      extra={"fields": {"request_id": request_id, "cost_nanoton": cost}})
            cost = 0
        if checked and valid is not None and request_id:
            self.receipts.record(request_id, valid, last.cost_nanoton, receipt, broken=isinstance(last, ResponseError))
        self.audit.end(ticket, seen=True, channel=channel, cost=cost, voucher=valid)

    def _keep(self, request_id: str, voucher: Voucher) -> tuple[str | None, Voucher | None]:
        """The channel of ours `voucher` is for, and the voucher if it is valid (kept as the newest, or
        superseded by a newer one kept already)."""
        purse = next((p for p in list(self.purses.values()) if p.channel == voucher.contract), None)
        try:
            if purse is None:
                raise VoucherError(f"a voucher for {voucher.contract}, which is none of this client's channels")
            if not purse.keep(voucher):
                self.superseded_vouchers += 1
        except VoucherError as exc:
            self.refused_vouchers += 1
            log.error("refused a voucher from the proxy", extra={"fields": {"request_id": request_id,
                                                                             "reason": str(exc)}})
            return (purse.channel if purse else None), None
        return purse.channel, voucher

    def _check_price(self, request_id: str, last: ResponseEnd | ResponseError) -> None:
        """The answer costs at most its usage at the root's prices times the worker's coefficient, capped by this
        client's own cap (an older proxy names no coefficient: the cap, if any, bounds it)."""
        cap = self.cfg.default_max_coefficient
        coefficient = last.coefficient or cap
        if coefficient is None:
            return
        allowed = coefficient if cap is None else min(coefficient, cap)
        fair = (max(price_request(last.usage, prices, allowed).client_cost for prices in self._prices)
                if last.usage is not None else 0)
        above_cap = cap is not None and coefficient > cap
        if last.cost_nanoton <= fair and not above_cap:
            return
        self.overpriced_answers += 1
        self.overpriced_nanoton += max(last.cost_nanoton - fair, 0)
        log.error("over-charge: an answer costs more than its usage at the prices on chain and the worker's "
                  "coefficient allow", extra={"fields": {
                      "request_id": request_id, "cost_nanoton": last.cost_nanoton, "fair_nanoton": fair,
                      "coefficient": last.coefficient, "max_coefficient": cap}})

    @property
    def overcharges(self) -> int:
        """Over-charges found: answers priced above their usage, vouchers above every answer they could cover."""
        return self.overpriced_answers + self.audit.overcharges

    @property
    def unexplained_nanoton(self) -> int:
        return self.audit.unexplained_nanoton

    @property
    def charged_nanoton(self) -> int:
        return sum(p.charged for p in list(self.purses.values()))

    async def run(self) -> None:
        """Top channels up when they run low; keep the balance figure fresh."""
        while True:
            await asyncio.sleep(self.cfg.chain_poll_s)
            try:
                await asyncio.to_thread(self._top_up)
            except Exception:  # a background loop must outlive any one failed round: the next one retries
                log.exception("channel top-up failed")

    def _top_up(self) -> None:
        for address, purse in list(self.purses.items()):
            if purse.top_up_if_low() is not None:
                log.info("topped up the payment channel", extra={"fields": {"proxy": address}})
        self._refresh()

    def _refresh(self) -> None:
        self.balance_nanoton = sum(p.remaining() for p in list(self.purses.values()))
        prices = self.ledger.refresh().prices
        if prices != self._prices[0]:
            self._prices = (prices, self._prices[0])

    def close(self) -> None:
        """After the last request ended."""
        if self.audit.settled:
            self._in_doubt.unlink(missing_ok=True)
        self.vouchers.close()
        self.receipts.close()
        self.ledger.close()
