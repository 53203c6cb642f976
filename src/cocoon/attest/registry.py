"""The root registry as attestation sees it: its allow-lists (images, remote engines) for policies that read them,
and its proxy list, against which clients and workers check the proxy they dialed.

Every attestation check asks for the current view; the ledger answers from its cache and re-reads only
when the registry's version moved, so an image the owner removes stops passing at the next check: new
handshakes at once, live links at their next periodic re-check (`cocoon.wire.connection`).
"""

from __future__ import annotations

import logging

from cocoon.attest.types import AttestationError, PeerIdentity
from cocoon.ledger.base import Ledger, RootParams
from cocoon.ledger.onchain import OnChainLedger

log = logging.getLogger(__name__)


class RegistryImages:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._seen = ledger.refresh()

    def current(self) -> RootParams:
        params = self.ledger.refresh()
        if params.version != self._seen.version:
            log.info("root registry changed", extra={"fields": {
                "version": params.version,
                "proxy_images": len(params.proxy_image_hashes),
                "worker_images": len(params.worker_image_hashes),
            }})
            self._seen = params
        return params


def check_registered_proxy(ledger: OnChainLedger, endpoint: str, peer: PeerIdentity) -> None:
    """Refuses (AttestationError) a proxy dialed at `endpoint` unless the root registry lists, at that endpoint,
    the voucher key its attested claims name: its RA-TLS key and its voucher key are then the registered proxy's,
    and the vouchers it signs draw on the channel this node opened with that proxy's contract."""
    registered = [entry.pubkey for entry in ledger.proxies() if entry.endpoint == endpoint]
    if not registered:
        raise AttestationError(f"no proxy is registered at {endpoint} in root {ledger.root}")
    if peer.voucher_key not in registered:
        claimed = peer.voucher_key.hex()[:16] + "…" if peer.voucher_key else "none"
        listed = ", ".join(key.hex()[:16] + "…" for key in registered)
        raise AttestationError(f"the proxy at {endpoint} claims voucher key {claimed}, but root {ledger.root} "
                               f"registers {listed} at that endpoint")
