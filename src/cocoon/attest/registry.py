"""The root registry as attestation sees it: its allow-lists (images, remote engines) for policies that read them,
and its proxy list, against which clients and workers check the proxy they dialed.

Every attestation check asks for the current view; the ledger answers from its cache and re-reads only
when the registry's version moved, so an image the owner removes stops passing at the next check: new
handshakes at once, live links at their next periodic re-check (`cocoon.wire.connection`).

The view is what the registry's transparency log proves (`TrustedLog`, over ledger/translog.py): a hash is trusted
only when the entry that added it is included under the owner's signed tree head, and every new head must extend the
last one this node saw (saved in its state directory). A log that does not verify (a fork, a bad signature) leaves
nothing trusted: fail closed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import msgspec

from cocoon.attest.types import AttestationError, PeerIdentity
from cocoon.ledger.base import Ledger, RootParams
from cocoon.ledger.onchain import OnChainLedger
from cocoon.ledger.translog import HeadStore, LogError, RegistryLog

log = logging.getLogger(__name__)


class TrustedLog:
    """The registry's transparency log as this node follows it: read incrementally, each signed head checked to extend
    the last one seen (kept in `heads`, so a restart does not forget it)."""

    def __init__(self, ledger: OnChainLedger, heads: HeadStore | None = None) -> None:
        self.ledger = ledger
        self.heads = heads
        self._log: RegistryLog | None = None

    def refresh(self) -> RegistryLog:
        """The log now, verified; AttestationError saying why it cannot be trusted."""
        try:
            log_now = RegistryLog.read(self.ledger, self._log)
            if self.heads is not None:
                self.heads.advance(log_now)
        except LogError as exc:
            raise AttestationError(f"the root registry's transparency log does not verify: {exc}") from None
        self._log = log_now
        return log_now

    def prove(self, params: RootParams) -> RootParams:
        """`params` holding only the hashes the log proves present (each entry's inclusion under the signed head);
        nothing at all when the log does not verify."""
        try:
            log_now = self.refresh()
        except AttestationError as exc:
            log.error("trusting no registry hash", extra={"fields": {"reason": str(exc)}})
            return msgspec.structs.replace(params, proxy_image_hashes=frozenset(), worker_image_hashes=frozenset(),
                                           model_hashes=frozenset())

        def proven(hashes: frozenset[str]) -> frozenset[str]:
            kept = set()
            for value in hashes:
                try:
                    log_now.check_trusted(value)
                    kept.add(value)
                except LogError as exc:
                    log.warning("registry hash not proven by its log", extra={"fields": {"hash": value,
                                                                                         "reason": str(exc)}})
            return frozenset(kept)

        return msgspec.structs.replace(params, proxy_image_hashes=proven(params.proxy_image_hashes),
                                       worker_image_hashes=proven(params.worker_image_hashes),
                                       model_hashes=proven(params.model_hashes))


class RegistryImages:
    def __init__(self, ledger: Ledger, heads: HeadStore | None = None) -> None:
        """`heads`: where the last tree head of the registry log seen is kept (an on-chain ledger's log is checked
        whenever the registry changes or its signed head moves)."""
        self.ledger = ledger
        self.log = TrustedLog(ledger, heads) if isinstance(ledger, OnChainLedger) else None
        self._seen = self._trusted(ledger.refresh())

    def _trusted(self, params: RootParams) -> RootParams:
        return self.log.prove(params) if self.log is not None else params

    def current(self) -> RootParams:
        params = self.ledger.refresh()
        if (params.version, params.log_signed_size) != (self._seen.version, self._seen.log_signed_size):
            self._seen = self._trusted(params)
            log.info("root registry changed", extra={"fields": {
                "version": params.version,
                "log_signed_size": params.log_signed_size,
                "proxy_images": len(self._seen.proxy_image_hashes),
                "worker_images": len(self._seen.worker_image_hashes),
            }})
        return self._seen


def registered_proxy_check(ledger: OnChainLedger, heads: Path) -> Callable[[str, PeerIdentity], None]:
    """What a client or worker paying through `ledger` checks of the proxy it dialed (`check_registered_proxy`),
    following the registry's log with its last seen head kept in `heads`."""
    return functools.partial(check_registered_proxy, ledger, log=TrustedLog(ledger, HeadStore(heads)))


def check_registered_proxy(ledger: OnChainLedger, endpoint: str, peer: PeerIdentity,
                           log: TrustedLog | None = None) -> None:
    """Refuses (AttestationError) a proxy dialed at `endpoint` unless the root registry lists, at that endpoint,
    the voucher key its attested claims name: its RA-TLS key and its voucher key are then the registered proxy's,
    and the vouchers it signs draw on the channel this node opened with that proxy's contract. With `log`, the
    registration must also be included under the registry log's signed head."""
    registered = [entry.pubkey for entry in ledger.proxies() if entry.endpoint == endpoint]
    if not registered:
        raise AttestationError(f"no proxy is registered at {endpoint} in root {ledger.root}")
    if peer.voucher_key not in registered:
        claimed = peer.voucher_key.hex()[:16] + "…" if peer.voucher_key else "none"
        listed = ", ".join(key.hex()[:16] + "…" for key in registered)
        raise AttestationError(f"the proxy at {endpoint} claims voucher key {claimed}, but root {ledger.root} "
                               f"registers {listed} at that endpoint")
    if log is not None:
        try:
            log.refresh().check_trusted(peer.voucher_key.hex())
        except LogError as exc:
            raise AttestationError(f"the registration of the proxy at {endpoint} is not proven by the registry's "
                                   f"transparency log: {exc}") from None
