"""Opening sealed requests (cocoon/seal) with the HPKE key whose public half is in this worker's attested claims:
each sealed request at most once (a replayed encapsulation is refused until its deadline), and only when its
cleartext envelope tells the truth about the body where the proxy acts on it (the `deterministic` mark)."""

from __future__ import annotations

import time

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cocoon.core.errors import ApiError, ErrorCode
from cocoon.openai.content import is_deterministic
from cocoon.seal import OpenedRequest, ReplayGuard, SealError, SealKey
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
        # the proxy spot-checks requests marked deterministic: one marked so that samples would have this worker's
        # answer differ from another's and be held against it. Unmarked deterministic bodies pass (a client may
        # keep its requests out of checks, and clients before the mark send none)
        if req.deterministic and not is_deterministic(opened.body):
            raise SealError(400, "the sealed request's envelope marks it deterministic, but its body samples (no "
                                 "`temperature` 0 and no integer `seed`)", ErrorCode.SEALED_ENVELOPE_MISMATCH)
        return opened


def open_sealed(unsealer: Unsealer | None, req: Request) -> OpenedRequest:
    """A sealed request opened by this worker (chat and media alike); ApiError (400) naming what was wrong,
    including a worker that holds no key."""
    if unsealer is None:
        raise ApiError(400, "this worker holds no key to open sealed requests", code=ErrorCode.SEAL_KEY_UNKNOWN)
    return unsealer.open(req, time.time())
