"""The root registry's image allow-lists, as a policy with `image_hashes = "registry"` sees them.

Every attestation check asks for the current view; the ledger answers from its cache and re-reads only
when the registry's version moved, so an image the owner removes stops passing at the next check: new
handshakes at once, live links at their next periodic re-check (`cocoon.wire.connection`).
"""

from __future__ import annotations

import logging

from cocoon.ledger.base import Ledger, RootParams

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
