"""The proxy's side of settlement: bringing the books to the chain in batches, as an operator would want.

Every on-chain operation costs fees (contracts README, vectors/fees.json), so nothing is settled per request:
- a client's charges are claimed (`charge` with the latest voucher, ~0.0066 TON) once its unclaimed total
  reaches `client_claim_nanoton` or half its stake, whichever comes first: the stake is the proxy's only
  guarantee, so the claim comes well before the client could withdraw down to it;
- the proxy commits its books' state (`commit`, ~0.0018 TON) when it changed, as often as its owner calls
  `commit_due` (the proxy: every `commit_interval_s`, 600 s by default, ~0.26 TON a day).
Workers redeem their own vouchers (purse.py). All methods block on the ledger: run them off the event loop.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from cocoon.ledger.base import TON, ChannelState, Ledger, LedgerError
from cocoon.ledger.books import ProxyBooks
from cocoon.ledger.vouchers import Voucher
from cocoon.ledger.wallet import Wallet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SettlementPolicy:
    client_claim_nanoton: int = 1 * TON  # fee per claim ~0.0066 TON: 0.7% of a 1 TON batch


@dataclass
class ClaimTimes:
    """How long settled requests waited for their claim to be final on chain (the chain returned the claim's
    transactions): per request, from its settlement in the books to the end of the claim that covered it."""

    claims: int = 0
    requests: int = 0
    total_s: float = 0.0
    min_s: float | None = None  # the newest request of a claim: the chain's own latency plus a poll round
    max_s: float | None = None  # the oldest: how long charges accumulated before the claim threshold

    def add(self, count: int, sum_ts: float, first_ts: float, last_ts: float, final_at: float) -> None:
        if count == 0:
            return
        self.claims += 1
        self.requests += count
        self.total_s += count * final_at - sum_ts
        newest, oldest = final_at - last_ts, final_at - first_ts
        self.min_s = newest if self.min_s is None else min(self.min_s, newest)
        self.max_s = oldest if self.max_s is None else max(self.max_s, oldest)

    def summary(self) -> dict[str, float | int | None]:
        mean = self.total_s / self.requests if self.requests else None
        return {"claims": self.claims, "requests": self.requests,
                "mean_s": round(mean, 3) if mean is not None else None,
                "min_s": round(self.min_s, 3) if self.min_s is not None else None,
                "max_s": round(self.max_s, 3) if self.max_s is not None else None}


class ProxySettlement:
    def __init__(self, ledger: Ledger, books: ProxyBooks, wallet: Wallet, proxy: str,
                 policy: SettlementPolicy = SettlementPolicy()) -> None:
        """`wallet`: the proxy contract's owner wallet (it pays the fees); `proxy`: the proxy contract."""
        self.ledger = ledger
        self.books = books
        self.wallet = wallet
        self.proxy = proxy
        self.policy = policy
        self._last_commit_seqno = ledger.last_commit(proxy)[0]
        self.claim_times = ClaimTimes()
        self._claimed_until: dict[str, float] = {}  # per client: the settlement time of the newest request claimed

    def check_rollback(self) -> None:
        """Raise books.RolledBack when the books are behind the state this proxy committed on chain."""
        self.books.check_commit(*self.ledger.last_commit(self.proxy))

    def sync_client(self, client: str, channel: str) -> ChannelState:
        """Read the client's channel from the chain into the books (after it connects, and after each claim)."""
        state = self.ledger.channel_state(channel)
        self.books.set_client_channel(client, channel, balance=state.balance, stake=state.stake,
                                      claimed=state.charged, chain_seqno=state.seqno, state=state.state)
        return state

    def sync_worker(self, worker: str, wallet_address: str) -> str:
        channel = self.ledger.worker_channel_address(self.proxy, wallet_address)
        self.books.set_worker_channel(worker, channel, redeemed=self.ledger.worker_channel_state(channel).paid)
        return channel

    def claim_due(self) -> int:
        """Claim on chain every client's charges that reached the threshold (or half its stake), and everything
        on a channel that is closing (after its delay the client can take it all); how many claims."""
        due: list[tuple[str, Voucher]] = []
        for client, unclaimed, stake, state in self.books.unclaimed():
            if state == "open" and unclaimed < min(self.policy.client_claim_nanoton, max(stake // 2, 1)):
                continue
            voucher = self.books.client_voucher(client)
            if voucher is not None:
                due.append((client, voucher))
        if not due:
            return 0
        covered = {client: self.books.settled_since(client, self._claimed_until.get(client, 0.0))
                   for client, _ in due}  # read before the claim: what its vouchers cover
        # sent together: four claims per wallet transfer on TON, one seqno and one wallet transaction for them
        results = self.ledger.settle_charges(self.wallet, [v for _, v in due])
        final_at = time.time()
        claimed = 0
        for (client, voucher), result in zip(due, results, strict=True):
            if isinstance(result, LedgerError):  # the next round retries with a newer voucher
                log.warning("claiming a client's charges failed", extra={"fields": {
                    "channel": voucher.contract, "amount": voucher.amount, "error": str(result)}})
            else:
                claimed += 1
                count, sum_ts, first_ts, last_ts = covered[client]
                if result.fees is not None:  # the chain returned the claim's transactions: it is final
                    self.claim_times.add(count, sum_ts, first_ts, last_ts, final_at)
                if count:
                    self._claimed_until[client] = last_ts
            self.sync_client(client, voucher.contract)
        return claimed

    def commit_due(self) -> bool:
        """Commit the books' state on chain if it moved since the last commit; whether it did."""
        seqno, state_hash = self.books.durable()
        if seqno <= self._last_commit_seqno:
            return False
        self.ledger.commit(self.wallet, self.proxy, seqno, state_hash)
        self._last_commit_seqno = seqno
        return True
