"""The money side of a local network (`cocoon up`): one chain for every process, each party's wallet funded,
each proxy registered in the root and staked.

Files in the state directory, shared by every role:
- `ledger.sqlite`: the local chain;
- `<name>.wallet`: each party's wallet seed (the proxy's is its operator wallet, which pays for claims and commits);
- `<name>.voucher-key`: a proxy's voucher key (registered in the root; signs the vouchers);
- `<name>.vouchers.sqlite`: the vouchers a client or worker holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cocoon.config import Prices
from cocoon.ledger.base import TON, Terms
from cocoon.ledger.local import LocalLedger
from cocoon.ledger.wallet import Wallet

LEDGER_FILE = "ledger.sqlite"
FUNDING = 1000 * TON  # what each party's wallet is topped up to at start


def ledger_path(state_dir: Path) -> Path:
    return state_dir / LEDGER_FILE


def wallet_path(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.wallet"


def voucher_key_path(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.voucher-key"


def vouchers_path(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.vouchers.sqlite"


@dataclass(frozen=True)
class ProxySpec:
    name: str
    endpoint: str  # host:port of its RA-TLS listener, as clients and workers dial it


def prepare(state_dir: Path, *, proxies: list[ProxySpec], parties: list[str], prices: Prices, terms: Terms,
            funding: int = FUNDING) -> LocalLedger:
    """Create (or reuse) the chain, fund every party's wallet up to `funding`, and register and stake every proxy
    not yet registered at its endpoint. Idempotent: a second run on the same state dir changes only what is
    missing."""
    state_dir.mkdir(parents=True, exist_ok=True)
    ledger = LocalLedger(ledger_path(state_dir), default_prices=prices, terms=terms)
    for name in [*parties, *(p.name for p in proxies)]:
        wallet = Wallet.load_or_create(wallet_path(state_dir, name))
        missing = funding - ledger.balance(wallet.address)
        if missing > 0:
            ledger.fund(wallet, missing)
    registered = {(e.pubkey, e.endpoint) for e in ledger.proxies()}
    for spec in proxies:
        key = Wallet.load_or_create(voucher_key_path(state_dir, spec.name))
        if (key.public_key, spec.endpoint) in registered:
            continue
        operator = Wallet.load_or_create(wallet_path(state_dir, spec.name))
        address = ledger.register_proxy(operator.address, key.public_key, spec.endpoint)
        ledger.add_proxy_stake(operator, address, ledger.root_params().terms.min_proxy_stake)
    return ledger
