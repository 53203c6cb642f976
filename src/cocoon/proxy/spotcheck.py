"""Spot checks, the decisions without I/O (issue 11 item 4; the re-execution itself is proxy/rerun.py).

A share of deterministic requests (temperature 0, or a seed) is re-run on another worker of the same model and
image, off the client's path, and the two answers are compared. Two honest runs of one deterministic request differ
only in what each engine makes fresh for every answer (the completion's `id`, `created`), so what is compared is the
answer's **content digest**: per choice, its text, its tool calls and its finish reason, the same whether the answer
came whole or streamed. When the two differ, a third worker referees: the worker whose answer the other two agree
against is blamed (`failed`); when no third worker is free, or all three differ, the check is `unresolved` (kept as
evidence, blaming nobody).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from cocoon.core.usage import Usage
from cocoon.wire.messages import Request, ResponseEnd

PASSED, FAILED, UNRESOLVED = "passed", "failed", "unresolved"


def is_deterministic(body: bytes) -> bool:
    """Whether the request asks for one answer only: `temperature` 0, or an integer `seed`. The body was checked
    to be one JSON object before it reached here (proxy/validation.py); anything else is not deterministic."""
    try:
        obj = json.loads(body)
    except ValueError:
        return False
    if not isinstance(obj, dict):
        return False
    seed, temperature = obj.get("seed"), obj.get("temperature")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return True
    return isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0


@dataclass(eq=False)
class Sample:
    """A request chosen for a check, and the answer payloads its client received (for a stream, as relayed)."""

    req: Request
    payloads: list[bytes] = field(default_factory=list)


class SpotSampler:
    """Chooses which requests are checked: each deterministic one with probability `share`."""

    def __init__(self, share: float, rng: random.Random | None = None) -> None:
        self.share = share
        self._rng = rng or random.Random()
        self.deterministic = 0  # deterministic requests seen
        self.sampled = 0

    def sample(self, req: Request) -> Sample | None:
        if self.share <= 0 or not is_deterministic(req.body):
            return None
        self.deterministic += 1
        if self.share < 1 and self._rng.random() >= self.share:
            return None
        self.sampled += 1
        return Sample(req)


def content_digest(payloads: Iterable[bytes]) -> str:
    """SHA-256 (hex) over what an answer says: per choice index, its text (`message.content`, the streamed
    `delta.content`s, or a completion's `text`), its tool calls (names and arguments, joined per call) and its last
    finish reason. Payloads that are not JSON objects (`[DONE]`) and fields made fresh per answer are left out."""
    choices: dict[str, dict[str, Any]] = {}
    for payload in payloads:
        try:
            obj = json.loads(payload)
        except ValueError:
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
            continue
        for choice in obj["choices"]:
            if isinstance(choice, dict):
                _fold_choice(choices, choice)
    canonical = json.dumps(choices, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _fold_choice(choices: dict[str, dict[str, Any]], choice: dict[str, Any]) -> None:
    acc = choices.setdefault(str(choice.get("index", 0)), {"text": "", "tools": {}, "finish_reason": None})
    if isinstance(choice.get("text"), str):
        acc["text"] += choice["text"]
    for part in (choice.get("message"), choice.get("delta")):
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("content"), str):
            acc["text"] += part["content"]
        calls = part.get("tool_calls")
        for position, call in enumerate(calls if isinstance(calls, list) else ()):
            if not isinstance(call, dict):
                continue
            tool = acc["tools"].setdefault(str(call.get("index", position)), {"name": "", "arguments": ""})
            function = call.get("function")
            if isinstance(function, dict):
                tool["name"] += function.get("name") or ""
                tool["arguments"] += function.get("arguments") or ""
    if choice.get("finish_reason"):
        acc["finish_reason"] = choice["finish_reason"]


class Execution(msgspec.Struct, frozen=True):
    """One run of the checked request: whose, what it said (content digest), what it reported."""

    worker: str  # the worker's RA-TLS key (hex)
    name: str
    digest: str  # content_digest of its answer
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


def execution(worker: str, name: str, payloads: Iterable[bytes], end: ResponseEnd) -> Execution:
    """One run as evidence: whose it was, what its answer said, and what its worker reported and signed."""
    receipt = end.receipt.to_base64() if end.receipt is not None else None
    return Execution(worker, name, content_digest(payloads), end.usage, receipt)


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
