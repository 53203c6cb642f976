"""The money side of a local network (`cocoon up`): each party's wallet funded, each proxy registered in the root and
staked, on any chain the caller reaches (`provision`): `cocoon chain serve` over its HTTP API (the root owned by a
standard wallet, coins from its faucet), or the in-process local chain (`prepare`, for tests without a devnet).

Files each node keeps in its own state directory (`cocoon up` gives each its own, STATE_DIR/NAME):
- `<name>.wallet`: its wallet seed, sealed to the node (`cocoon.nodekeys`; the proxy's is its operator wallet, which
  pays for claims and commits);
- `<name>.voucher-key`: a proxy's voucher key, sealed likewise (registered in the root; signs the vouchers);
- `<name>.vouchers.sqlite`: the vouchers a client or worker holds.
The caller opens the wallets and keys (through the nodes' key service); this module only uses them.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cocoon.config import Prices
from cocoon.fsutil import private_dir
from cocoon.ledger.base import TON, LedgerError, Terms
from cocoon.ledger.local import LocalLedger
from cocoon.ledger.onchain import OnChainLedger
from cocoon.ledger.owner import RootOwner
from cocoon.ledger.wallet import Wallet

LEDGER_FILE = "ledger.sqlite"
FUNDING = 1000 * TON  # what each party's wallet is topped up to at start


def ledger_path(state_dir: Path) -> Path:
    return state_dir / LEDGER_FILE


def vouchers_path(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.vouchers.sqlite"


@dataclass(frozen=True)
class ProxySpec:
    endpoint: str  # host:port of its RA-TLS listener, as clients and workers dial it
    operator: Wallet  # its operator wallet: pays for the registration, the stake, claims and commits
    voucher_key: Wallet  # registered in the root with the endpoint; signs the vouchers


def fund_from_faucet(url: str, needs: list[tuple[Wallet, int]]) -> None:
    """Pay each wallet its amount from the devnet's faucet, all at once (they arrive in the same block)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda need: faucet(url, need[0].address, need[1]), needs))


def faucet(url: str, address: str, amount: int, *, timeout_s: float = 30.0) -> int:
    """Ask the devnet at `url` (`cocoon chain serve`, not its /api/v2) to pay `amount` nanoTON to `address`; waits
    for the block that pays it; the address's balance then. LedgerError when it refuses or does not answer."""
    result = devnet_call(url, "faucet", {"address": address, "amount": amount}, timeout_s=timeout_s)
    return int(result["balance"])


def devnet_call(url: str, method: str, body: dict[str, Any] | None = None, *, timeout_s: float = 30.0) -> Any:
    """One of the devnet's own endpoints (`/devnet/info`, `faucet`, `advance`, `audit`): its result; LedgerError
    when it refuses or does not answer."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{url.rstrip('/')}/devnet/{method}", data=data,
                                 method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read())
        except ValueError:
            raise LedgerError(f"the devnet at {url} answered HTTP {exc.code} to {method}") from None
    except (OSError, ValueError) as exc:
        raise LedgerError(f"no devnet answers at {url}: {exc}") from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = answer.get("error") if isinstance(answer, dict) else answer
        raise LedgerError(f"the devnet at {url} refused {method}: {error}")
    return answer["result"]


def provision(ledger: OnChainLedger, owner: RootOwner, fund: Callable[[list[tuple[Wallet, int]]], object], *,
              proxies: list[ProxySpec], parties: list[Wallet], prices: Prices | None = None,
              terms: Terms | None = None, funding: int = FUNDING) -> None:
    """Fund every party's and proxy operator's wallet up to `funding` (`fund([(wallet, amount), ...])`), set the
    root's prices and terms when given and different (a network's creation), and register and stake every proxy
    not yet registered at its endpoint.
    Idempotent: a second run changes only what is missing."""
    wallets = {w.address: w for w in [*parties, *(p.operator for p in proxies)]}
    missing = [(w, funding - ledger.balance(a)) for a, w in wallets.items()]
    fund([(w, m) for w, m in missing if m > 0])
    current = ledger.read_root()
    wanted = (prices or current.prices, terms or current.terms)
    if (current.prices, current.terms) != wanted:
        owner.set_params(*wanted)
    registered = {(e.pubkey, e.endpoint) for e in ledger.proxies()}
    for spec in proxies:
        if (spec.voucher_key.public_key, spec.endpoint) in registered:
            continue
        address = owner.register_proxy(spec.operator.address, spec.voucher_key.public_key, spec.endpoint)
        ledger.add_proxy_stake(spec.operator, address, ledger.read_root().terms.min_proxy_stake)
    root = ledger.read_root()
    if root.log_signed_size < root.log_size:  # changes nobody vouched for yet (a hand-over): the owner signs
        owner.sign_head()


def prepare(state_dir: Path, *, proxies: list[ProxySpec], parties: list[Wallet], prices: Prices, terms: Terms,
            funding: int = FUNDING) -> LocalLedger:
    """`provision` on the in-process local chain in `state_dir` (created with `prices` and `terms` if absent), its
    coins minted: for tests whose nodes share that chain file."""
    ledger = LocalLedger(ledger_path(private_dir(state_dir)), default_prices=prices, terms=terms)
    def mint(needs: list[tuple[Wallet, int]]) -> None:
        for wallet, amount in needs:
            ledger.fund(wallet, amount)

    provision(ledger, ledger.root_owner(), mint, proxies=proxies, parties=parties, funding=funding)
    return ledger
