"""Spot checks, the decisions without I/O (issue 11 item 4; the re-execution itself is proxy/rerun.py).

A share of deterministic requests (temperature 0, or a seed) is re-run on another worker of the same model and
image, off the client's path, and the two answers are compared. Two honest runs of one deterministic request differ
only in what each engine makes fresh for every answer (the completion's `id`, `created`), so what is compared is the
answer's **content digest**: per choice, its text, its tool calls and its finish reason, the same whether the answer
came whole or streamed (cocoon/openai/content.py). When the two differ, a third worker referees: the worker whose
answer the other two agree against is blamed (`failed`); when no third worker is free, or all three differ, the
check is `unresolved` (kept as evidence, blaming nobody).

A sealed request (issue 10) is opaque to the proxy: it is checked when its client marked it deterministic in its
envelope (`Request.deterministic`, which the worker that opens it holds true), and each run's content digest is the
one its worker signed in its receipt (which the client checks against the answer it opened).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

from cocoon.core.usage import Usage
from cocoon.ledger.pricing import Bounds
from cocoon.openai.content import content_digest, is_deterministic
from cocoon.wire.messages import Request, ResponseEnd

PASSED, FAILED, UNRESOLVED = "passed", "failed", "unresolved"


@dataclass(eq=False)
class Sample:
    """A request chosen for a check, and the answer payloads its client received (for a stream, as relayed)."""

    req: Request
    payloads: list[bytes] = field(default_factory=list)
    # the keys of the workers it was sent to (every attempt): a sealed request is opened at most once per worker
    # (their replay guards), so a re-run never goes to one of them
    tried: set[str] = field(default_factory=set)
    bounds: Bounds | None = None  # what the request can produce: what a re-run is paid for at most


class SpotSampler:
    """Chooses which requests are checked: each deterministic one with probability `share`."""

    def __init__(self, share: float, rng: random.Random | None = None) -> None:
        self.share = share
        self._rng = rng or random.Random()
        self.deterministic = 0  # deterministic requests seen
        self.sampled = 0

    def sample(self, req: Request, bounds: Bounds | None = None) -> Sample | None:
        if self.share <= 0 or not (req.deterministic if req.sealed else is_deterministic(req.body)):
            return None
        self.deterministic += 1
        if self.share < 1 and self._rng.random() >= self.share:
            return None
        self.sampled += 1
        return Sample(req, bounds=bounds)


class Execution(msgspec.Struct, frozen=True):
    """One run of the checked request: whose, what it said (content digest), what it reported."""

    worker: str  # the worker's RA-TLS key (hex)
    name: str
    digest: str  # the content digest of its answer (hex)
    usage: Usage
    # the worker's signed receipt for this run (ledger/receipts.py, base64), when it sent one: its signature over the
    # request and the exact answer bytes makes the evidence hold for whoever checks it, not only for this proxy
    receipt: str | None = None


class SpotEvidence(msgspec.Struct, frozen=True):
    """A check whose runs disagreed: kept in the blamed (or both, unresolved) workers' reputation and logged."""

    request_id: str  # the client's request that was checked
    model: str
    image_hash: str | None
    checked_at: float  # unix time
    verdict: str  # failed | unresolved
    blamed: str | None  # the key of the worker the others agreed against
    runs: list[Execution]  # the client's answer first, then the check, then the referee when one ran


def execution(worker: str, name: str, payloads: Iterable[bytes], end: ResponseEnd, *, sealed: bool = False
              ) -> Execution | None:
    """One run as evidence: whose it was, what its answer said, and what its worker reported and signed. A sealed
    answer says what its worker's receipt states (`content_digest`); None when it states nothing."""
    receipt = end.receipt.to_base64() if end.receipt is not None else None
    if not sealed:
        return Execution(worker, name, content_digest(payloads).hex(), end.usage, receipt)
    if end.receipt is None or not end.receipt.content_digest:
        return None
    return Execution(worker, name, end.receipt.content_digest.hex(), end.usage, receipt)


def judge(runs: Sequence[Execution]) -> tuple[str, str | None]:
    """The verdict of a check from its runs (the client's answer, the check, maybe a referee) and the key of the
    worker to blame, if any."""
    if len(runs) < 2:
        raise ValueError("a check compares at least two runs")
    original, check = runs[0], runs[1]
    if original.digest == check.digest:
        return PASSED, None
    if len(runs) < 3:
        return UNRESOLVED, None
    referee = runs[2]
    if referee.digest == original.digest:
        return FAILED, check.worker
    if referee.digest == check.digest:
        return FAILED, original.worker
    return UNRESOLVED, None
