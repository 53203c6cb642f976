"""Opening sealed requests (cocoon/seal) with the HPKE key whose public half is in this worker's attested claims:
each sealed request at most once (a replayed encapsulation is refused until its deadline)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cocoon.seal import OpenedRequest, ReplayGuard, SealKey
from cocoon.wire.messages import Request


class Unsealer:
    def __init__(self, private_key: X25519PrivateKey, guard: ReplayGuard | None = None) -> None:
        self.key = SealKey(private_key)
        self.guard = guard or ReplayGuard()

    def open(self, req: Request, now: float) -> OpenedRequest:
        """The request's body and its answer's sealer; SealError (an ApiError) naming what was wrong. Only a request
        that opened is remembered, so garbage cannot fill the replay guard."""
        opened = self.key.open(req.body, req.envelope())
        self.guard.check(opened.enc, req.deadline, now)
        return opened
