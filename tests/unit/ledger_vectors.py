"""The sandbox's recorded vectors (src/cocoon/contracts/vectors/lifecycle.json), for the ledger tests."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from functools import cache
from typing import Any

from pytoniq_core import Cell
from pytoniq_core.tlb.transaction import MessageAny

from cocoon.ledger.contracts import VECTORS_DIR, config_boc, config_global_id
from cocoon.ledger.wallet import Wallet

# the sandbox's default config is a mainnet snapshot: its vouchers are signed for -239
SANDBOX_GLOBAL_ID = config_global_id(config_boc())


def cell(b64: str) -> Cell:
    return Cell.one_from_boc(base64.b64decode(b64))


def message(b64: str) -> MessageAny:
    return MessageAny.deserialize(cell(b64).begin_parse())


@cache
def vectors() -> list[dict[str, Any]]:
    return json.loads((VECTORS_DIR / "lifecycle.json").read_text())["vectors"]


def steps() -> list[tuple[str, list[dict[str, Any]]]]:
    """The vectors grouped by the operation (step) that caused them, in order."""
    return [(name, list(group)) for name, group in itertools.groupby(vectors(), key=lambda v: v["step"])]


def fees() -> dict[str, int]:
    return {k: int(v) for k, v in json.loads((VECTORS_DIR / "fees.json").read_text())["fees"].items()}


def contract_addresses() -> dict[str, str]:
    """contract name -> raw address."""
    return {v["contract"]: v["address"] for v in vectors()}


def sandbox_key(name: str) -> Wallet:
    """The sandbox tests' keys: seed = SHA-256("cocoon-test-key:<name>") (tests/contracts/helpers.mjs)."""
    return Wallet(hashlib.sha256(f"cocoon-test-key:{name}".encode()).digest())
