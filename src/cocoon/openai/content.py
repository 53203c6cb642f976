"""What an answer says, and whether a request asks for one answer only (issue 11: spot checks and receipts).

Two honest runs of one deterministic request differ only in what each engine makes fresh for every answer (the
completion's `id`, `created`), so what runs are compared by is the answer's **content digest**: per choice, its
text, its tool calls and its finish reason, the same whether the answer came whole or streamed. The proxy computes
it over a plain answer it relayed; for a sealed answer, which it cannot read, the worker signs it in its receipt
(ledger/receipts.py `content_digest`) and the client, which opens the answer, checks it.

`is_deterministic` is the one definition of a request that asks for one answer only: the client marks a sealed
request so in its envelope (`Request.deterministic`), the worker refuses a request so marked whose body is not, and
the proxy samples plain requests by it. All three must read a body alike, so it is written once, here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import msgspec

from cocoon.core.errors import DECODE_ERRORS

_DECODE_ERRORS = (*DECODE_ERRORS, ValueError)  # msgspec.ValidationError (a number out of range) is a ValueError


def is_deterministic(body: bytes) -> bool:
    """Whether the request body asks for one answer only: `temperature` 0, or an integer `seed`. Anything that is
    not one JSON object is not deterministic."""
    try:
        obj = msgspec.json.decode(body)
    except _DECODE_ERRORS:
        return False
    if not isinstance(obj, dict):
        return False
    seed, temperature = obj.get("seed"), obj.get("temperature")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return True
    return isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0


class ContentDigest:
    """The content digest of an answer, fed its payloads in order (`add`); `digest()` is SHA-256 over, per choice
    index, its text (`message.content`, the streamed `delta.content`s, or a completion's `text`), its tool calls
    (names and arguments, joined per call) and its last finish reason, in canonical JSON. Payloads that are not JSON
    objects with `choices` (`[DONE]`, a usage-only chunk) and fields made fresh per answer are left out."""

    __slots__ = ("_choices",)

    def __init__(self) -> None:
        self._choices: dict[str, dict[str, Any]] = {}

    def add(self, payload: bytes) -> None:
        try:
            obj = msgspec.json.decode(payload)
        except _DECODE_ERRORS:
            return
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
            return
        for choice in obj["choices"]:
            if isinstance(choice, dict):
                self._fold(choice)

    def _fold(self, choice: dict[str, Any]) -> None:
        # texts are kept as lists of pieces, joined once by digest(): `+=` on a string held in a dict copies it
        # whole each time (an answer of n chunks cost O(n²))
        acc = self._choices.setdefault(str(choice.get("index", 0)), {"text": [], "tools": {}, "finish_reason": None})
        if isinstance(choice.get("text"), str):
            acc["text"].append(choice["text"])
        for part in (choice.get("message"), choice.get("delta")):
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("content"), str):
                acc["text"].append(part["content"])
            calls = part.get("tool_calls")
            for position, call in enumerate(calls if isinstance(calls, list) else ()):
                if not isinstance(call, dict):
                    continue
                tool = acc["tools"].setdefault(str(call.get("index", position)), {"name": [], "arguments": []})
                function = call.get("function")
                if isinstance(function, dict):
                    name, arguments = function.get("name"), function.get("arguments")
                    if isinstance(name, str):
                        tool["name"].append(name)
                    if isinstance(arguments, str):
                        tool["arguments"].append(arguments)
        if choice.get("finish_reason"):
            acc["finish_reason"] = choice["finish_reason"]

    def digest(self) -> bytes:
        joined = {index: {"text": "".join(acc["text"]), "finish_reason": acc["finish_reason"],
                          "tools": {i: {"name": "".join(t["name"]), "arguments": "".join(t["arguments"])}
                                    for i, t in acc["tools"].items()}}
                  for index, acc in self._choices.items()}
        canonical = json.dumps(joined, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).digest()  # a lone \ud800 is JSON


def content_digest(payloads: Iterable[bytes]) -> bytes:
    """The content digest (`ContentDigest`) of an answer's payloads."""
    digest = ContentDigest()
    for payload in payloads:
        digest.add(payload)
    return digest.digest()
