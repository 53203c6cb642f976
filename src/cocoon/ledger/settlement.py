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
from dataclasses import dataclass

from cocoon.ledger.base import TON, ChannelState, Ledger, LedgerError
from cocoon.ledger.books import ProxyBooks
from cocoon.ledger.vouchers import Voucher
from cocoon.ledger.wallet import Wallet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SettlementPolicy:
    client_claim_nanoton: int = 1 * TON  # fee per claim ~0.0066 TON: 0.7% of a 1 TON batch


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
        # sent together: four claims per wallet transfer on TON, one seqno and one wallet transaction for them
        results = self.ledger.settle_charges(self.wallet, [v for _, v in due])
        claimed = 0
        for (client, voucher), result in zip(due, results, strict=True):
            if isinstance(result, LedgerError):  # the next round retries with a newer voucher
                log.warning("claiming a client's charges failed", extra={"fields": {
                    "channel": voucher.contract, "amount": voucher.amount, "error": str(result)}})
            else:
                claimed += 1
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
