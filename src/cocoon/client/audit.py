"""The client's check of what its proxies charge it, whatever the order in which answers end.

A proxy signs one cumulative charge voucher per answer it settles, in the order it settles them; the answers,
each carrying its voucher, reach the client in another order. A voucher therefore covers answers whose end the
client has not seen yet; but only answers to requests the client had sent before that voucher arrived. So each
voucher is checked once every request sent before its arrival has ended:

    unexplained = voucher − (its channel's voucher when this process started
                             + Σ costs of the answers seen to requests sent before the voucher arrived)

Honest traffic makes that positive only through answers whose end never reached the client (a lost link, a
client that hung up mid-answer, requests in flight when the client last stopped): the proxy may have charged
them. A positive amount with no such answer is an over-charge. Answers seen whose charge is in a later voucher
make the figure smaller, never larger, so there is no false alarm at any concurrency; a check is exact when every
answer it counts carried a voucher no newer than the one checked. Vouchers are cumulative: a charge once
unexplained is in every later voucher, so the figure reported is the largest found.

Pure bookkeeping on the event loop, no I/O: `ClientPayments` feeds it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from cocoon.ledger.vouchers import Voucher

log = logging.getLogger(__name__)


@dataclass
class _Check:
    """One voucher, waiting for the requests that may be in it to end."""

    seqno: int
    amount: int
    request_id: str  # of the answer that brought it, for the log
    at: float  # when it arrived
    mark: int  # the requests (tickets) below this one may be in the voucher; none from this one on
    later_costs: int = 0  # costs seen from tickets ≥ mark: counted in `received`, never in the voucher
    later_unseen: int = 0  # answers never seen, from tickets ≥ mark
    newest_below: int = -1  # the newest voucher seqno carried by answers from tickets < mark, after it arrived

    @property
    def exact(self) -> bool:
        """Every answer it counts is in it (none carried a newer voucher)."""
        return self.newest_below <= self.seqno


@dataclass
class _Channel:
    seqno: int  # the newest voucher seen: its seqno, amount, when it arrived, the request that brought it
    amount: int
    at: float
    by: str
    base: int  # the voucher kept when this process started: the answers it covers ended before
    # requests of an earlier run, in flight when it stopped, may have been charged after `base`, until their
    # deadline: an unexplained charge may be theirs until an exact check of a voucher arriving after that
    inherited_until: float | None
    received: int = 0  # Σ costs of the answers seen on this channel since this process started
    unexplained: int = 0
    check: _Check | None = None


class ChargeAudit:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._next = 0  # the next request's ticket: tickets grow in the order requests are sent
        self._inflight: dict[int, str] = {}  # ticket -> request id
        self._order: deque[int] = deque()  # tickets in flight, oldest first (ended ones dropped lazily)
        self._channels: dict[str, _Channel] = {}
        self.unseen_answers = 0  # requests that ended without their answer's end reaching this client
        self.overcharges = 0  # voucher checks that found a charge no answer explains

    def open(self, channel: str, kept: Voucher | None, *, inherited_s: float | None) -> None:
        """Start checking `channel`, whose newest voucher kept (from an earlier run) is `kept`. `inherited_s`: an
        earlier run may have had answers charged after it without seeing their end, for up to this long (the
        longest a request of it may have run on); None: it left none."""
        amount = kept.amount if kept else 0
        until = self._clock() + inherited_s if inherited_s is not None else None
        self._channels.setdefault(channel, _Channel(kept.seqno if kept else -1, amount, 0.0, "", amount, until))

    def begin(self, request_id: str) -> int:
        """A request is about to be sent (before its first byte leaves: from then on its charge may be in any
        voucher). Returns its ticket, for `end`."""
        ticket = self._next
        self._next += 1
        self._inflight[ticket] = request_id
        self._order.append(ticket)
        return ticket

    def request_id(self, ticket: int) -> str:
        return self._inflight.get(ticket, "")

    def end(self, ticket: int, *, seen: bool, channel: str | None = None, cost: int = 0,
            voucher: Voucher | None = None) -> None:
        """Request `ticket` ended. `seen`: its answer's end (or error) came from the proxy; else the proxy may have
        charged it unseen. `cost`: what that end said it cost, on `channel`; `voucher`: the valid voucher it
        carried for `channel` (newest or not). A ticket already ended is ignored."""
        request_id = self._inflight.pop(ticket, None)
        if request_id is None:
            return
        if not seen:
            self.unseen_answers += 1
            for ch in self._channels.values():
                if ch.check is not None and ticket >= ch.check.mark:
                    ch.check.later_unseen += 1
        ch = self._channels.get(channel) if channel is not None else None
        if ch is not None:
            self._answered(ch, ticket, request_id, cost, voucher)
        self._evaluate()

    def _answered(self, ch: _Channel, ticket: int, request_id: str, cost: int, voucher: Voucher | None) -> None:
        ch.received += cost
        check = ch.check
        if check is not None and ticket >= check.mark:
            check.later_costs += cost
        if voucher is None:
            return
        if check is not None and ticket < check.mark:
            check.newest_below = max(check.newest_below, voucher.seqno)
        if voucher.seqno > ch.seqno:
            ch.seqno, ch.amount, ch.at, ch.by = voucher.seqno, voucher.amount, self._clock(), request_id
            if check is None:  # it covers at most the requests sent until now
                ch.check = _Check(ch.seqno, ch.amount, ch.by, ch.at, self._next)

    @property
    def unexplained_nanoton(self) -> int:
        return sum(ch.unexplained for ch in self._channels.values())

    @property
    def settled(self) -> bool:
        """Nothing in flight, every answer's end seen, an earlier run's doubt cleared: no charge can follow the
        newest voucher unseen."""
        return not self._inflight and not self.unseen_answers and all(c.inherited_until is None for c in
                                                                        self._channels.values())

    def _oldest(self) -> int:
        """The oldest ticket in flight, or the next one when none is."""
        while self._order and self._order[0] not in self._inflight:
            self._order.popleft()
        return self._order[0] if self._order else self._next

    def _evaluate(self) -> None:
        oldest = self._oldest()
        for channel, ch in self._channels.items():
            while ch.check is not None and ch.check.mark <= oldest:
                check = ch.check
                # a newer voucher seen meanwhile is checked next, against every request sent until now
                ch.check = _Check(ch.seqno, ch.amount, ch.by, ch.at, self._next) if ch.seqno > check.seqno else None
                excess = check.amount - (ch.base + ch.received - check.later_costs)
                unseen = self.unseen_answers - check.later_unseen + (ch.inherited_until is not None)
                if ch.inherited_until is not None and check.exact and check.at >= ch.inherited_until:
                    ch.inherited_until = None  # every charge of the earlier run is in this voucher
                if excess > ch.unexplained:
                    self._report(channel, ch, check, excess, unseen)

    def _report(self, channel: str, ch: _Channel, check: _Check, excess: int, unseen: int) -> None:
        fields = {"request_id": check.request_id, "channel": channel, "voucher_seqno": check.seqno,
                  "voucher_nanoton": check.amount, "unexplained_nanoton": excess,
                  "newly_unexplained_nanoton": excess - ch.unexplained, "unseen_answers": unseen}
        ch.unexplained = excess
        if unseen:
            log.warning("the proxy charged more than the answers this client saw; some may have been charged "
                        "without their end reaching it", extra={"fields": fields})
        else:
            self.overcharges += 1
            log.error("over-charge: the proxy's voucher charges more than every answer it could cover",
                      extra={"fields": fields})
