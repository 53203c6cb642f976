"""The compiled contracts (src/cocoon/contracts/build) and the numbers they speak: ops, voucher tags, exit codes,
fee constants. Everything here mirrors src/cocoon/contracts/README.md and func/common.fc."""

from __future__ import annotations

import json
from enum import IntEnum
from functools import cache
from pathlib import Path

from pytoniq_core import Cell, HashMap, begin_cell

CONTRACTS_DIR = Path(__file__).resolve().parent.parent / "contracts"
BUILD_DIR = CONTRACTS_DIR / "build"
VECTORS_DIR = CONTRACTS_DIR / "vectors"
NAMES = ("root", "proxy", "client_channel", "worker_channel")


class Op(IntEnum):
    ROOT_SET_PARAMS = 0x52000001
    ROOT_SET_HASH = 0x52000002
    ROOT_SET_CODES = 0x52000003
    ROOT_REGISTER_PROXY = 0x52000004
    ROOT_UNREGISTER_PROXY = 0x52000005
    ROOT_SET_OWNER = 0x52000006
    ROOT_SIGN_HEAD = 0x52000007
    ROOT_SET_LOG_KEY = 0x52000008
    PROXY_DEPLOY = 0x50000001
    PROXY_ADD_STAKE = 0x50000002
    PROXY_COMMIT = 0x50000003
    PROXY_START_CLOSE = 0x50000004
    PROXY_WITHDRAW = 0x50000005
    CLIENT_OPENED = 0x50000011
    CLIENT_CHARGED = 0x50000012
    CLIENT_CLOSED = 0x50000013
    PAYOUT_REQUEST = 0x50000021
    PAYOUT = 0x50000022
    PROXY_WITHDRAWN = 0x50000023
    DEPOSIT = 0x43000001
    WITHDRAW = 0x43000002
    CHARGE = 0x43000003
    CLOSE_FINAL = 0x43000004
    REQUEST_CLOSE = 0x43000005
    FINALIZE_CLOSE = 0x43000006
    REFUND = 0x43000007
    REDEEM = 0x57000001


class Tag(IntEnum):
    """What a voucher signature commits to (the first 32 bits of the signed cell)."""

    CHARGE = 0x63686172  # cumulative charge of a client channel
    FINAL = 0x66696E6C  # the same, and the channel closes at this total now
    PAYOUT = 0x7061796F  # cumulative payout of a worker channel


TREE_HEAD_TAG = 0x74726565  # "tree": the first 32 bits of the cell a registry log's tree head signature covers


class HashKind(IntEnum):
    """`set_hash` kinds of the root registry."""

    PROXY_IMAGE = 1
    WORKER_IMAGE = 2
    MODEL = 3


EXIT_CODES: dict[int, str] = {
    100: "unknown_op: unknown or missing op",
    101: "unauthorized: the sender may not do this",
    102: "bad_signature: voucher not signed by the proxy's key for this contract and tag (or tree head: log key)",
    103: "old_voucher: replayed or older voucher, or commit seqno not increasing",
    104: "insufficient_balance: charge above the channel's balance",
    105: "below_stake: withdraw into the stake, or stake above the balance",
    106: "too_early: before the close delay",
    107: "bad_state: not allowed in this state (closing, closed, proxy not active)",
    108: "not_child: the sender is not the genuine channel it claims to be",
    109: "low_value: too little value attached",
    110: "stake_too_low: stake below min_client_stake",
    111: "open_channels: the proxy still has open client channels",
    112: "no_funds: payout beyond the proxy's stake + earnings - payouts",
    113: "bad_params: malformed or inconsistent root change",
    -14: "out of gas: far too little value attached",
}

# func/common.fc: kept from each deposit or stake as the contract's gas and storage buffer; the least value any
# other operation must carry; what a channel -> proxy notification carries.
DEPOSIT_FEE = 50_000_000
MIN_OP_VALUE = 20_000_000
NOTIFY_VALUE = 10_000_000

# The network's global id (ConfigParam 19), which every voucher binds (contracts README, "Vouchers"): TON's main and
# test networks, and cocoon's local chains (ledger/chain.py), so that a voucher of one is worthless on the others.
MAINNET_GLOBAL_ID = -239
TESTNET_GLOBAL_ID = -3
LOCAL_GLOBAL_ID = 0x636F636F  # "coco"
_GLOBAL_ID_PARAM = 19

# channel and proxy states (get_channel_state / get_proxy_state)
CHANNEL_STATES = ("new", "open", "closing", "closed")
PROXY_STATES = ("new", "active", "closing", "closed")


def describe_exit(code: int) -> str:
    return EXIT_CODES.get(code, f"exit code {code}")


@cache
def code(name: str) -> Cell:
    """The compiled code cell of contract `name`, checked against build/hashes.json."""
    if name not in NAMES:
        raise ValueError(f"no contract {name!r}; there are {list(NAMES)}")
    cell = Cell.one_from_boc((BUILD_DIR / f"{name}.boc").read_bytes())
    expected = json.loads((BUILD_DIR / "hashes.json").read_text())["contracts"][name]
    if cell.hash.hex() != expected:
        raise RuntimeError(f"{BUILD_DIR / name}.boc hashes to {cell.hash.hex()}, hashes.json says {expected}")
    return cell


@cache
def config_boc() -> bytes:
    """The blockchain config the sandbox tests ran with (basechain prices): the emulator needs a real one."""
    return (VECTORS_DIR / "config.boc").read_bytes()


def config_params(config: bytes) -> dict[int, Cell]:
    """The blockchain config (a `Hashmap 32 ^Cell` root, as the emulator takes it) by parameter number."""
    root = Cell.one_from_boc(config)
    return HashMap.parse(root.begin_parse(), 32, key_deserializer=lambda bits: int(bits, 2),
                         value_deserializer=lambda s: s.load_ref())


def config_global_id(config: bytes) -> int:
    """The global id a blockchain config gives its chain."""
    return config_params(config)[_GLOBAL_ID_PARAM].begin_parse().load_int(32)


def config_with_global_id(config: bytes, global_id: int) -> bytes:
    """The same blockchain config for a chain whose global id is `global_id`."""
    params = HashMap(32, value_serializer=lambda cell, b: b.store_ref(cell))
    for number, cell in config_params(config).items():
        params.set_int_key(number, cell)
    params.set_int_key(_GLOBAL_ID_PARAM, begin_cell().store_int(global_id, 32).end_cell())
    return params.serialize().to_boc()
