"""The money side of a local network (`cocoon up`): one chain for every process, each party's wallet funded,
each proxy registered in the root and staked.

Files in the state directory, shared by every role:
- `ledger.sqlite`: the local chain; `ledger.owner-key`: its root owner's key, kept out of the chain file;
- `<name>.wallet`: each party's wallet seed, sealed to the node (`cocoon.nodekeys`; the proxy's is its operator
  wallet, which pays for claims and commits);
- `<name>.voucher-key`: a proxy's voucher key, sealed likewise (registered in the root; signs the vouchers);
- `<name>.vouchers.sqlite`: the vouchers a client or worker holds.
The caller opens the wallets and keys (through the nodes' key service); this module only uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cocoon.config import Prices
from cocoon.fsutil import private_dir
from cocoon.ledger.base import TON, Terms
from cocoon.ledger.local import LocalLedger
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


def prepare(state_dir: Path, *, proxies: list[ProxySpec], parties: list[Wallet], prices: Prices, terms: Terms,
            funding: int = FUNDING) -> LocalLedger:
    """Create (or reuse) the chain, fund every party's and proxy operator's wallet up to `funding`, and register and
    stake every proxy not yet registered at its endpoint. Idempotent: a second run on the same state dir changes
    only what is missing."""
    ledger = LocalLedger(ledger_path(private_dir(state_dir)), default_prices=prices, terms=terms)
    for wallet in [*parties, *(p.operator for p in proxies)]:
        missing = funding - ledger.balance(wallet.address)
        if missing > 0:
            ledger.fund(wallet, missing)
    registered = {(e.pubkey, e.endpoint) for e in ledger.proxies()}
    for spec in proxies:
        if (spec.voucher_key.public_key, spec.endpoint) in registered:
            continue
        address = ledger.register_proxy(spec.operator.address, spec.voucher_key.public_key, spec.endpoint)
        ledger.add_proxy_stake(spec.operator, address, ledger.root_params().terms.min_proxy_stake)
    return ledger
