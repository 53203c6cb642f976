"""A node's chain, from its configuration: which network it must be (its global id) and how it is reached.

One code path serves devnet, testnet and mainnet: with `ton_api` set, every role's ledger is a `TonLedger` over the
toncenter-v2 HTTP transport, whatever answers there (`cocoon chain serve`, toncenter.com, a self-hosted
ton-http-api); the node knows which network it talks to only by the chain's global id (ConfigParam 19), which it
checks against its configured `network` before doing anything else, and which every voucher binds
(ledger/vouchers.py). Without `ton_api`, the in-process local chain in `STATE_DIR/ledger.sqlite` (unit tests).
"""

from __future__ import annotations

from cocoon.config import CommonConfig, Prices
from cocoon.ledger.base import LedgerError
from cocoon.ledger.contracts import LOCAL_GLOBAL_ID, MAINNET_GLOBAL_ID, TESTNET_GLOBAL_ID
from cocoon.ledger.devnet import ledger_path
from cocoon.ledger.local import LocalLedger
from cocoon.ledger.onchain import OnChainLedger
from cocoon.ledger.ton import TonLedger
from cocoon.ledger.toncenter import ToncenterTransport

GLOBAL_IDS = {"devnet": LOCAL_GLOBAL_ID, "testnet": TESTNET_GLOBAL_ID, "mainnet": MAINNET_GLOBAL_ID}


class WrongNetwork(LedgerError):
    """The chain a node reached is not the network its configuration names."""


def check_network(network: str, global_id: int, where: str) -> None:
    """Raise WrongNetwork unless `global_id` (read from the chain at `where`) is `network`'s."""
    expected = GLOBAL_IDS[network]
    if global_id != expected:
        names = {v: k for k, v in GLOBAL_IDS.items()}
        seen = f"{global_id} ({names[global_id]})" if global_id in names else str(global_id)
        raise WrongNetwork(f"the chain at {where} has global id {seen}, but this node is configured for network "
                           f"{network!r} (global id {expected}): refusing to start")


def transport_for(cfg: CommonConfig) -> ToncenterTransport:
    """The HTTP transport to the chain API the config names (LedgerError when it names none that is supported)."""
    if not cfg.ton_api:
        if cfg.liteservers:
            raise LedgerError(f"liteservers ({cfg.liteservers}): reaching the chain through liteservers with proofs "
                              f"is not supported yet; set ton_api to a toncenter-v2-compatible HTTP API")
        raise LedgerError("no chain API configured (ton_api)")
    return ToncenterTransport(cfg.ton_api, api_key=cfg.ton_api_key)


def open_ledger(cfg: CommonConfig, *, default_prices: Prices | None = None) -> OnChainLedger:
    """The ledger of a node with config `cfg`, on the network it names (WrongNetwork otherwise).

    `default_prices`: the root's prices if the local chain is created here (unit tests)."""
    if cfg.ton_api or cfg.liteservers:
        transport = transport_for(cfg)
        check_network(cfg.network, transport.global_id(), transport.url)
        return TonLedger(cfg.root, transport, sync_s=cfg.registry_sync_s)
    ledger = LocalLedger(ledger_path(cfg.state_path), default_prices=default_prices)
    try:
        check_network(cfg.network, ledger.chain.global_id, str(ledger.path))
    except WrongNetwork:
        ledger.close()
        raise
    return ledger
