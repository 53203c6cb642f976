"""The registry log (issue 11 item 5): every change of the root registry, in a Merkle log hashed as in RFC 6962/9162
(core/merkle.py), held by the root contract itself.

Where the leaves live: in the root contract's state (`get_log_entry(i)`), so every party that can read the chain
reads them with the same get-methods it reads the registry with, from any node of the chain; nobody has to serve
them. Each entry is one change as the contract applied it: `version:uint32 op:uint32` then the change message's
fields after its query id (contracts README). Leaf i = SHA-256(0x00 ‖ representation hash of entry i's cell). The
contract appends the entry and computes the new root itself (from the frontier it keeps), so the log cannot omit a
change; the owner then signs the tree head (`TreeHead`: the root contract, the network's global id, size and root
hash) with the log key the contract holds, and the contract keeps the newest signed head (it refuses a signature
over any other size or root). A party trusts the registry only as far as the signed head covers it: an entry beyond
it is not yet vouched for.

`RegistryLog` is the log as read (entries checked to hash to the signed head); `HeadStore` keeps the last head a
party saw and refuses a new one unless a consistency proof shows it extends the old (a forked or rewritten log).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from pytoniq_core import Address, Cell, Slice
from pytoniq_core.boc.tvm_bitarray import TvmBitarrayException

from cocoon.core.errors import DECODE_ERRORS, CocoonError
from cocoon.core.merkle import MerkleLog, ProofError, leaf_hash, verify_consistency, verify_inclusion
from cocoon.fsutil import write_atomically
from cocoon.ledger import layouts
from cocoon.ledger.contracts import HashKind, Op
from cocoon.ledger.wallet import raw_address

if TYPE_CHECKING:
    from cocoon.ledger.onchain import OnChainLedger

_HASH_KINDS = {int(k): k.name.lower() for k in HashKind}


class LogError(ValueError, CocoonError):
    """The registry log, a head or a proof does not hold: the message says why."""


class TreeHead(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The registry log at `size` entries, as its owner signed it (JSON: bytes in base64)."""

    root_contract: str  # raw address of the root contract whose log this is
    global_id: int  # the network's (ConfigParam 19): a head signed for another network does not verify here
    size: int
    root_hash: bytes
    key: bytes  # the log key (Ed25519) the root contract holds
    signature: bytes

    def signed_hash(self) -> bytes:
        return layouts.tree_head_cell(self.global_id, Address(self.root_contract), self.size, self.root_hash).hash

    def verify(self) -> None:
        """Raise LogError unless `key` signed this head."""
        try:
            VerifyKey(self.key).verify(self.signed_hash(), self.signature)
        except (BadSignatureError, ValueError) as exc:
            raise LogError(f"the tree head of size {self.size} is not signed by the registry's log key "
                           f"{self.key.hex()[:16]}…") from exc

    def describe(self) -> str:
        return f"size {self.size}, root {self.root_hash.hex()}"


class InclusionProof(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """That the entry whose leaf hash is `leaf` sits at `index` of the log at `size` entries with root `root_hash`."""

    index: int
    size: int
    leaf: bytes
    root_hash: bytes
    path: list[bytes]

    def verify(self, head: TreeHead) -> None:
        """Raise LogError unless this proof holds for `head` (a proof for another tree is refused as such)."""
        if (self.size, self.root_hash) != (head.size, head.root_hash):
            raise LogError(f"an inclusion proof for another tree (size {self.size}, root "
                           f"{self.root_hash.hex()[:16]}…): the signed head is {head.describe()}")
        try:
            verify_inclusion(self.index, self.size, self.leaf, self.path, head.root_hash)
        except ProofError as exc:
            raise LogError(f"the inclusion proof for entry {self.index} does not hold: {exc}") from None


@dataclass(frozen=True)
class LogEntry:
    index: int
    version: int  # the registry's version after this change
    op: str  # the change's operation (set_hash, set_params, ...)
    change: dict[str, Any]  # its fields, decoded
    leaf: bytes  # its leaf hash

    def mentions(self, value: str) -> bool:
        """Whether this change is about hash or key `value` (hex)."""
        return value in (self.change.get("hash"), self.change.get("pubkey"), self.change.get("key"))


def decode_entry(index: int, cell: Cell) -> LogEntry:
    """One entry as a person reads it; an entry this version cannot decode shows its raw bits rather than failing."""
    s = cell.begin_parse()
    if s.remaining_bits < 64:
        return LogEntry(index, 0, "undecoded", {"undecoded": True}, leaf_hash(cell.hash))
    version, op = s.load_uint(32), s.load_uint(32)
    try:
        name = Op(op).name.lower().removeprefix("root_")
    except ValueError:
        name = f"op_{op:08x}"
    try:
        change = _decode_change(op, s)
    except (*DECODE_ERRORS, TvmBitarrayException, IndexError, ValueError):
        change = {"undecoded": True}
    return LogEntry(index, version, name, change, leaf_hash(cell.hash))


def _decode_change(op: int, s: Slice) -> dict[str, Any]:
    if op == Op.ROOT_SET_HASH:
        kind, value, present = s.load_uint(8), s.load_bytes(32), s.load_bit()
        return {"kind": _HASH_KINDS.get(kind, str(kind)), "hash": value.hex(), "present": bool(present)}
    if op == Op.ROOT_SET_PARAMS:
        p = s.load_ref().begin_parse()
        names = ("price_per_token", "worker_fee_per_token", "prompt_multiplier", "cached_multiplier",
                 "completion_multiplier", "reasoning_multiplier", "client_close_delay", "proxy_close_delay",
                 "min_client_stake", "min_proxy_stake", "max_coefficient")
        widths = ("coins", "coins", 32, 32, 32, 32, 32, 32, "coins", "coins", 32)
        return {n: p.load_coins() if w == "coins" else p.load_uint(w) for n, w in zip(names, widths, strict=True)}
    if op == Op.ROOT_REGISTER_PROXY:
        owner, pubkey = raw_address(s.load_address()), s.load_bytes(32)
        return {"owner": owner, "pubkey": pubkey.hex(), "endpoint": s.load_ref().begin_parse().load_snake_string()}
    if op == Op.ROOT_UNREGISTER_PROXY:
        return {"proxy": f"0:{s.load_bytes(32).hex()}"}
    if op == Op.ROOT_SET_OWNER:
        return {"owner": raw_address(s.load_address())}
    if op == Op.ROOT_SET_LOG_KEY:
        return {"key": s.load_bytes(32).hex()}
    if op == Op.ROOT_SET_CODES:
        codes = s.load_ref()
        return {"codes": [ref.hash.hex() for ref in codes.refs]}
    return {"bits": s.load_bits(s.remaining_bits).to01() if s.remaining_bits else ""}


class RegistryLog:
    """The log as read from its root contract: every entry and the newest signed head, checked to agree."""

    def __init__(self, head: TreeHead | None, cells: list[Cell]) -> None:
        self.head = head  # None before the owner signed any
        self.cells = cells
        self.tree = MerkleLog([c.hash for c in cells])
        self.entries = [decode_entry(i, c) for i, c in enumerate(cells)]
        if head is not None:
            if head.size > len(cells):
                raise LogError(f"the signed head covers {head.size} entries, the root holds {len(cells)}")
            head.verify()
            if self.tree.root(head.size) != head.root_hash:
                raise LogError(f"the root's first {head.size} entries do not hash to the signed head's root")

    @classmethod
    def read(cls, ledger: OnChainLedger, known: RegistryLog | None = None) -> RegistryLog:
        """Read `ledger`'s registry log; the entries of `known` are taken as read (the log only
        grows: the new signed head is checked against all of them)."""
        size, _root, signed_size, signed_root, signature, key = ledger.run_get(ledger.root, "get_log")
        cells = list(known.cells[:size]) if known is not None else []
        for index in range(len(cells), size):
            (cell,) = ledger.run_get(ledger.root, "get_log_entry", [index])
            if cell is None:
                raise LogError(f"the root lists {size} log entries but has none at {index}")
            cells.append(cell)
        head = None
        if signature is not None:
            sig = (signature if isinstance(signature, Cell) else Cell.one_from_boc(signature)).begin_parse()
            head = TreeHead(raw_address(ledger.root), ledger.global_id(), signed_size,
                            signed_root.to_bytes(32, "big"), key.to_bytes(32, "big"), sig.load_bytes(64))
        return cls(head, cells)

    def signed(self) -> list[LogEntry]:
        """The entries the signed head vouches for."""
        return self.entries[: self.head.size if self.head else 0]

    def find(self, value: str) -> LogEntry:
        """The newest vouched-for entry about hash or key `value` (hex); LogError when none is."""
        value = value.lower()
        for entry in reversed(self.signed()):
            if entry.mentions(value):
                return entry
        raise LogError(f"no entry of the registry log within its signed head is about {value}")

    def prove(self, index: int) -> InclusionProof:
        if self.head is None:
            raise LogError("the registry log has no signed head yet")
        return InclusionProof(index, self.head.size, self.tree.leaves[index], self.head.root_hash,
                              self.tree.inclusion_proof(index, self.head.size))

    def check_trusted(self, value: str, present: bool = True) -> LogEntry:
        """The entry that makes `value` what the registry says it is (allowed when `present`), its inclusion proof
        verified against the signed head; LogError when the log does not show it."""
        entry = self.find(value)
        if entry.change.get("present", present) != present:
            raise LogError(f"the registry log's newest entry about {value} (#{entry.index}) "
                           f"{'removes' if present else 'adds'} it")
        assert self.head is not None  # find() found a signed entry
        self.prove(entry.index).verify(self.head)
        return entry


class HeadStore:
    """The last tree head a party saw (JSON file): a new head is taken only when it provably extends it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> TreeHead | None:
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=TreeHead)
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError) as exc:
            raise LogError(f"{self.path} holds no tree head: {exc}") from None

    def advance(self, log: RegistryLog) -> TreeHead | None:
        """Check that `log`'s signed head extends the saved one (consistency proof), then save it."""
        head = log.head
        if head is None:
            return None
        old = self.load()
        if old is not None:
            check_consistency(old, head, log)
        if old != head:
            write_atomically(self.path, msgspec.json.encode(head), 0o644)  # public: what was signed and seen
        return head


def check_consistency(old: TreeHead, new: TreeHead, log: RegistryLog) -> None:
    """Raise LogError unless `new` extends `old`: the same log (root contract, network), and an RFC 9162
    consistency proof from `log`'s entries between the two."""
    if (old.root_contract, old.global_id) != (new.root_contract, new.global_id):
        raise LogError(f"the saved head is the log of root {old.root_contract} (network {old.global_id}), not of "
                       f"{new.root_contract} (network {new.global_id})")
    old.verify()
    try:
        proof = log.tree.consistency_proof(old.size, new.size) if old.size <= new.size else []
        verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)
    except ProofError as exc:
        raise LogError(f"the registry log at {new.describe()} does not extend the head seen before "
                       f"({old.describe()}): {exc}") from None
