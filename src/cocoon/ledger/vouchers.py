"""Vouchers: the proxy's Ed25519 signature over exactly the cell the contracts verify (contracts README):

    voucher#_ tag:uint32 global_id:int32 contract:MsgAddressInt seqno:uint64 amount:Coins = Voucher;
    (signature over its hash)

`global_id` is the network's (ConfigParam 19): the contracts put their own chain's there when they verify, so a
voucher signed for one network (a test network, a local chain) is worthless on another with the same keys and
addresses. `amount` is cumulative since the channel opened and `seqno` orders the proxy's vouchers, so the latest
voucher is all a client or worker needs to keep. `VoucherBook` keeps it, in SQLite, and refuses anything that is
not newer, or not for its network.
"""

from __future__ import annotations

import hashlib
import re
import threading
from decimal import Decimal, InvalidOperation
from pathlib import Path

import msgspec
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from pytoniq_core import Address, Cell, begin_cell

from cocoon.core.errors import CocoonError
from cocoon.fsutil import open_sqlite
from cocoon.ledger.contracts import Tag
from cocoon.ledger.wallet import Wallet, raw_address


class VoucherError(ValueError, CocoonError):
    """A voucher that must not be accepted; the message says exactly why."""


class Voucher(msgspec.Struct, frozen=True):
    tag: int  # Tag: charge | final | payout
    global_id: int  # the network it was signed for (ConfigParam 19)
    contract: str  # the channel it is for, raw address
    seqno: int
    amount: int  # cumulative nanoTON
    signature: bytes = b""

    def signed_hash(self) -> bytes:
        return voucher_hash(self.tag, self.global_id, self.contract, self.seqno, self.amount)

    def verify(self, public_key: bytes, global_id: int) -> None:
        """Raise VoucherError unless `public_key` signed this voucher for the network whose id is `global_id` (what
        the contracts on that network check)."""
        if self.global_id != global_id:
            raise VoucherError(f"{describe(self)}: signed for the network with global id {self.global_id}; this "
                               f"network's is {global_id}")
        try:
            VerifyKey(public_key).verify(self.signed_hash(), self.signature)
        except (BadSignatureError, ValueError) as exc:
            raise VoucherError(f"{describe(self)}: the signature is not the proxy's") from exc


def voucher_hash(tag: Tag | int, global_id: int, contract: str, seqno: int, amount: int) -> bytes:
    """The representation hash of the voucher cell (what the contracts check the signature over).

    Every request signs two vouchers at the proxy and checks one at the client and one at the worker, and building
    the cell with pytoniq-core costs about 12 µs in Python; the cell has no references, so its hash is computed
    here straight from its bits (TVM whitepaper §3.1.4-5: SHA-256 of the two descriptor bytes and the data,
    completed to a whole byte by a 1 bit and 0 bits); tests/unit/test_voucher_hash.py checks it equal to
    `voucher_cell(...).hash`. A field out of its range (a peer's voucher is hostile input) is a ValueError."""
    match = _RAW_ADDRESS.fullmatch(contract)
    if match is None:  # a user-friendly form; ValueError for what is no address
        match = _RAW_ADDRESS.fullmatch(raw_address(contract))
        assert match is not None  # raw_address writes the raw form
    workchain = int(match.group(1))
    for name, value, low, high in (("tag", tag, 0, 1 << 32), ("global id", global_id, -(1 << 31), 1 << 31),
                                   ("workchain", workchain, -128, 128), ("seqno", seqno, 0, 1 << 64),
                                   ("amount", amount, 0, 1 << 120)):
        if not low <= value < high:
            raise ValueError(f"a voucher's {name} must be in [{low}, {high}), not {value}")
    coin_bytes = (amount.bit_length() + 7) // 8
    # tag:32 global_id:32 addr_std$10 anycast:0 workchain:8 hash:256 seqno:64 coins(len:4 value:8*len):
    # 399 + 8·len bits, always 7 past a whole byte, so the completion is a single 1 bit
    full_bytes = 49 + coin_bytes
    value = (tag << 32) | (global_id & 0xFFFFFFFF)
    value = (value << 3) | 0b100
    value = (value << 8) | (workchain & 0xFF)
    value = (value << 256) | int(match.group(2), 16)
    value = (value << 64) | seqno
    value = (value << 4) | coin_bytes
    value = (value << 8 * coin_bytes) | amount
    data = ((value << 1) | 1).to_bytes(full_bytes + 1, "big")
    # descriptors: no references, ordinary, level 0; then floor(bits/8) + ceil(bits/8)
    return hashlib.sha256(bytes((0, 2 * full_bytes + 1)) + data).digest()


def voucher_cell(tag: int, global_id: int, contract: str, seqno: int, amount: int) -> Cell:
    """The voucher as a cell, built by pytoniq-core (the reference for `voucher_hash`)."""
    return (begin_cell().store_uint(tag, 32).store_int(global_id, 32).store_address(Address(contract))
            .store_uint(seqno, 64).store_coins(amount).end_cell())


_RAW_ADDRESS = re.compile(r"(-?[0-9]{1,3}):([0-9a-fA-F]{64})")


def sign_voucher(key: Wallet, tag: Tag, contract: str, seqno: int, amount: int, *, global_id: int) -> Voucher:
    """`key` is the proxy's voucher key (any Ed25519 seed holder); `global_id` the network's (Ledger.global_id)."""
    contract = raw_address(contract)
    return Voucher(int(tag), global_id, contract, seqno, amount,
                   key.sign(voucher_hash(tag, global_id, contract, seqno, amount)))


def describe(v: Voucher) -> str:
    kind = Tag(v.tag).name.lower() if v.tag in _TAGS else f"tag-{v.tag}"  # a peer's voucher may carry any tag
    return f"{kind} voucher #{v.seqno} for {ton(v.amount)} TON on {v.contract}"


_TAGS = frozenset(Tag)


def nanoton(text: str) -> int:
    """'1.5' (TON) -> 1_500_000_000 nanoTON, exactly; ValueError beyond 9 decimals, negative, or not a number."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not an amount in TON") from None
    nano = value * 1_000_000_000
    if not nano.is_finite() or nano != nano.to_integral_value() or nano < 0:
        raise ValueError(f"{text} TON is not a whole number of nanoTON (at most 9 decimals, not negative)")
    return int(nano)


def ton(nanoton: int) -> str:
    """nanoTON as TON with 9 decimals."""
    sign = "-" if nanoton < 0 else ""
    whole, frac = divmod(abs(nanoton), 1_000_000_000)
    return f"{sign}{whole}.{frac:09d}"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS vouchers (
    contract TEXT NOT NULL, tag INTEGER NOT NULL, seqno INTEGER NOT NULL, amount INTEGER NOT NULL,
    signature BLOB NOT NULL, global_id INTEGER NOT NULL, PRIMARY KEY (contract, tag)
);
"""


class VoucherBook:
    """The latest voucher per (channel, tag) that a client or worker holds, durable across restarts.

    A new voucher is accepted only when it is signed by the channel's proxy and strictly newer: a higher seqno
    and a higher cumulative amount (a final voucher may repeat the amount: it only closes the channel).
    """

    def __init__(self, path: str | Path) -> None:
        # NORMAL: no fsync per voucher; a power cut can lose the newest ones, but vouchers are cumulative and
        # the next one covers everything before it
        self._db = open_sqlite(path, synchronous="NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(vouchers)")}
        if "global_id" not in columns:
            self._db.close()
            raise VoucherError(f"{path} holds vouchers from before vouchers named their network, which no contract "
                               f"of this version accepts: move it away (with the chain they were for)")
        self._lock = threading.Lock()
        # The newest voucher per (channel, tag), read once from the file: the process keeping a book is its only
        # writer (each node has its own file; `cocoon ledger` commands open one to read), so a voucher is stored
        # in one statement, after its checks against this copy, rather than in a transaction that reads it back.
        self._newest: dict[tuple[str, int], Voucher | None] = {}

    def accept(self, voucher: Voucher, proxy_key: bytes, *, global_id: int, contract: str | None = None) -> None:
        """Store `voucher` if it is valid for the network `global_id` and newer, else raise VoucherError.
        `contract`: the channel it must be for (a voucher for another channel is worthless here)."""
        self._store(voucher, proxy_key, global_id, contract, superseded_ok=False)

    def keep_latest(self, voucher: Voucher, proxy_key: bytes, *, global_id: int, contract: str) -> bool:
        """Like `accept`, for vouchers that arrive in another order than they were signed in (a client's charge
        vouchers ride on its answers, which end in any order): a valid voucher signed before the one kept (a lower
        seqno and no higher amount, or the kept one itself) is superseded: False, nothing stored. True when
        stored; VoucherError when invalid or inconsistent with the one kept."""
        return self._store(voucher, proxy_key, global_id, contract, superseded_ok=True)

    def _store(self, voucher: Voucher, proxy_key: bytes, global_id: int, contract: str | None, *,
               superseded_ok: bool) -> bool:
        if contract is not None and raw_address(contract) != voucher.contract:
            raise VoucherError(f"{describe(voucher)}: expected a voucher for {raw_address(contract)}")
        if voucher.amount < 0 or voucher.seqno < 0:
            raise VoucherError(f"{describe(voucher)}: negative seqno or amount")
        voucher.verify(proxy_key, global_id)
        with self._lock:
            last = self._latest(voucher.contract, voucher.tag)
            if last is not None and superseded_ok and _superseded(voucher, last):
                return False
            if last is not None:
                _check_newer(voucher, last)
            # one statement, its own transaction: the check above read this process's own copy
            self._db.execute("INSERT OR REPLACE INTO vouchers VALUES (?, ?, ?, ?, ?, ?)",
                             (voucher.contract, voucher.tag, voucher.seqno, voucher.amount, voucher.signature,
                              voucher.global_id))
            self._newest[voucher.contract, voucher.tag] = voucher
        return True

    def latest(self, contract: str, tag: Tag) -> Voucher | None:
        with self._lock:
            return self._latest(raw_address(contract), int(tag))

    def _latest(self, contract: str, tag: int) -> Voucher | None:
        key = (contract, tag)
        if key not in self._newest:
            row = self._db.execute("SELECT global_id, seqno, amount, signature FROM vouchers WHERE contract = ? AND "
                                   "tag = ?", key).fetchone()
            self._newest[key] = Voucher(tag, row[0], contract, row[1], row[2], row[3]) if row else None
        return self._newest[key]

    def close(self) -> None:
        self._newest.clear()  # a closed book answers nothing, not its last copy
        self._db.close()


def _check_newer(new: Voucher, last: Voucher) -> None:
    if new.seqno <= last.seqno:
        raise VoucherError(f"{describe(new)}: seqno {new.seqno} is not above the last accepted #{last.seqno}")
    if new.amount < last.amount or (new.amount == last.amount and new.tag != Tag.FINAL):
        raise VoucherError(f"{describe(new)}: the total is not above the {ton(last.amount)} TON already signed "
                           f"at #{last.seqno}")


def _superseded(old: Voucher, last: Voucher) -> bool:
    """`old` is consistent with having been signed no later than `last`: cumulative amounts never go down as
    seqnos go up."""
    return old == last or (old.seqno < last.seqno and old.amount <= last.amount)
