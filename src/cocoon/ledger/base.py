"""The ledger interface the proxy, workers and clients use; backends: `local` (ledger/local.py, a
chain in one SQLite file executing the compiled contracts) and `ton` (ledger/ton.py, real TON).

Every method blocks (file, emulator or network): call them from a thread (`asyncio.to_thread`) on an event loop,
except `root_params` and `refresh`, which answer from a cache and are cheap enough for the request path.
Amounts are integer nanoTON; addresses are raw strings (`0:<64 hex>`).
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import msgspec

from cocoon.config import Prices
from cocoon.core.errors import CocoonError

if TYPE_CHECKING:
    from cocoon.ledger.vouchers import Voucher
    from cocoon.ledger.wallet import Wallet

TON = 1_000_000_000
REGISTRY_ROLES = ("proxy", "worker")  # the roles that run in TEEs, whose images the root registry lists

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


def image_hash_hex(value: bytes | str) -> str:
    """An image hash, given raw or as hex, as 64 lowercase hex characters; ValueError if it is not one."""
    text = value.hex() if isinstance(value, bytes) else value
    if not _HEX_SHA256.fullmatch(text):
        raise ValueError(f"image hash {value!r} is not 64 lowercase hex characters (a SHA-256)")
    return text


def engine_entry(model: str, origin: str) -> str:
    """The registry entry (hex SHA-256) that lets workers serve `model` from an engine outside their image at
    `origin` (`scheme://host:port`, as their claims name it, `cocoon.attest.trustconfig`).

    The root contract keeps 256-bit hashes in three lists (proxy images, worker images, models); engine entries
    live in the model list, apart from model hashes by their domain prefix, until the contract has a list of
    their own."""
    return hashlib.sha256(b"cocoon-engine-v1\0" + model.encode() + b"\0" + origin.encode()).hexdigest()


def model_entry(model: str, weights_sha256: str) -> str:
    """The registry entry (hex SHA-256) that lets workers serve `model` from the weights whose SHA-256 (hex) is
    `weights_sha256` (what their claims carry: inference/weights.py). In the model list, apart from engine entries
    by its domain prefix."""
    return hashlib.sha256(b"cocoon-model-v1\0" + model.encode() + b"\0" + weights_sha256.encode()).hexdigest()


class Terms(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The root's rules for channels beyond the prices: close delays (seconds) and minimum stakes (nanoTON)."""

    client_close_delay: int = 3600
    proxy_close_delay: int = 86400
    min_client_stake: int = 1 * TON
    min_proxy_stake: int = 10 * TON


class RootParams(msgspec.Struct, frozen=True):
    """The root registry at one `version` (it grows on every change)."""

    version: int
    prices: Prices
    terms: Terms = Terms()
    proxy_image_hashes: frozenset[str] = frozenset()  # lowercase hex SHA-256 image hashes
    worker_image_hashes: frozenset[str] = frozenset()
    model_hashes: frozenset[str] = frozenset()
    # the registry's transparency log (ledger/translog.py): its entries, and how many the owner's signed head covers
    log_size: int = 0
    log_signed_size: int = 0

    def allowed_images(self, role: str) -> frozenset[str]:
        """The image hashes the registry allows for `role`; none for roles it does not list (clients)."""
        if role == "proxy":
            return self.proxy_image_hashes
        if role == "worker":
            return self.worker_image_hashes
        return frozenset()

    def allows_engine(self, model: str, origin: str) -> bool:
        """Whether workers may serve `model` from an engine outside their image at `origin`."""
        return engine_entry(model, origin) in self.model_hashes

    def allows_model(self, model: str, weights_sha256: str) -> bool:
        """Whether workers may serve `model` from the weights with this SHA-256 (hex)."""
        return model_entry(model, weights_sha256) in self.model_hashes


class LedgerError(CocoonError):
    """An operation could not be sent (no funds in the wallet, no such contract, chain unreachable)."""


class LedgerRefused(LedgerError):
    """A contract refused an operation: its exit code says why. The chain's fees for trying are spent."""

    def __init__(self, operation: str, address: str, exit_code: int | None, meaning: str) -> None:
        super().__init__(f"{operation} refused by {address}: exit code {exit_code} ({meaning})")
        self.operation = operation
        self.address = address
        self.exit_code = exit_code


@dataclass(frozen=True)
class ChannelState:
    """A client channel (client × proxy × nonce). `balance` includes the stake; `charged` is the cumulative total
    the proxy has claimed on chain."""

    address: str
    state: str  # new | open | closing | closed
    balance: int
    stake: int
    charged: int
    seqno: int  # of the last voucher applied on chain
    unlock_at: int  # when a closing channel may be finalized without the proxy (unix time)

    @property
    def withdrawable(self) -> int:
        return max(self.balance - self.stake, 0) if self.state == "open" else 0


@dataclass(frozen=True)
class ProxyState:
    address: str
    status: str  # new | active | closing | closed
    stake: int
    earned: int  # charges received from client channels
    paid_out: int  # payouts to workers
    open_clients: int
    close_at: int
    commit_seqno: int
    commit_hash: bytes


@dataclass(frozen=True)
class WorkerChannelState:
    address: str
    seqno: int
    paid: int  # cumulative, already paid to the worker


@dataclass(frozen=True)
class Outcome:
    """What an operation cost on chain: every transaction's fees plus the forward fees of the messages between
    them. On `local` the sending wallet is the chain's own and costs nothing; on `ton` it is a standard wallet
    contract, whose transaction's fees are counted. None where the backend returns before the chain executed the
    operation (`ton` over liteservers)."""

    fees: int | None


_Item = TypeVar("_Item")


def one_by_one(send: Callable[[_Item], Outcome], items: Iterable[_Item]) -> list[Outcome | LedgerError]:
    """Each item sent on its own: its outcome, or the LedgerError it met (one refusal does not stop the rest)."""
    out: list[Outcome | LedgerError] = []
    for item in items:
        try:
            out.append(send(item))
        except LedgerError as exc:
            out.append(exc)
    return out


class Ledger(ABC):
    # ---- the registry ----
    @abstractmethod
    def root_params(self) -> RootParams:
        """The registry as last seen (cached: never a network round trip on the request path)."""

    @abstractmethod
    def refresh(self) -> RootParams:
        """The registry including changes made elsewhere (another process, the chain). Called on every
        attestation check, so it must stay cheap: a backend behind a network returns the view its
        background sync last saw."""

    @abstractmethod
    def global_id(self) -> int:
        """The network's global id (ConfigParam 19), which every voucher binds: the contracts verify vouchers
        against their own chain's."""

    # ---- addresses (computed from the contracts' StateInit; a proxy's identity is read once) ----
    @abstractmethod
    def proxy_key(self, proxy: str) -> bytes:
        """The Ed25519 public key that signs proxy contract `proxy`'s vouchers."""

    @abstractmethod
    def client_channel_address(self, proxy: str, client: str, nonce: int = 0) -> str:
        """The genuine channel of wallet `client` with proxy contract `proxy`."""

    @abstractmethod
    def worker_channel_address(self, proxy: str, worker: str) -> str:
        """The genuine channel paying wallet `worker` for proxy contract `proxy`."""

    # ---- reads ----
    @abstractmethod
    def balance(self, address: str) -> int:
        """nanoTON held by a wallet or contract (0 if it does not exist)."""

    @abstractmethod
    def wallet_key(self, address: str) -> bytes | None:
        """The public key that controls wallet `address` (None if unknown): how a peer proves it owns a wallet."""

    @abstractmethod
    def channel_state(self, channel: str) -> ChannelState: ...

    @abstractmethod
    def proxy_state(self, proxy: str) -> ProxyState: ...

    @abstractmethod
    def worker_channel_state(self, channel: str) -> WorkerChannelState: ...

    @abstractmethod
    def last_commit(self, proxy: str) -> tuple[int, bytes]:
        """The `(seqno, state hash)` the proxy last committed on chain ((0, 32 zero bytes) before any)."""

    # ---- proxy (its owner wallet) ----
    @abstractmethod
    def add_proxy_stake(self, wallet: Wallet, proxy: str, amount: int) -> Outcome: ...

    @abstractmethod
    def commit(self, wallet: Wallet, proxy: str, seqno: int, state_hash: bytes) -> Outcome:
        """Record the proxy's books at `seqno` on chain; refused unless `seqno` is above the last commit."""

    @abstractmethod
    def settle_charge(self, wallet: Wallet, voucher: Voucher) -> Outcome:
        """Claim a client channel's charge voucher (tag charge) or close it at once with a final one."""

    def settle_charges(self, wallet: Wallet, vouchers: list[Voucher]) -> list[Outcome | LedgerError]:
        """Claim several channels' vouchers (sent together where the backend can: four per wallet transfer on
        `ton`); each one's outcome or the error it met."""
        return one_by_one(lambda voucher: self.settle_charge(wallet, voucher), vouchers)

    # ---- client ----
    @abstractmethod
    def open_channel(self, wallet: Wallet, proxy: str, deposit: int, stake: int, nonce: int = 0) -> Outcome:
        """Deploy the channel and deposit `deposit` (of which `stake` is stake) in one message."""

    @abstractmethod
    def deposit(self, wallet: Wallet, channel: str, amount: int, stake_raise: int = 0) -> Outcome:
        """Top up an open channel by exactly `amount` (the wallet also pays the channel's deposit fee)."""

    @abstractmethod
    def withdraw(self, wallet: Wallet, channel: str, amount: int) -> Outcome: ...

    @abstractmethod
    def request_close(self, wallet: Wallet, channel: str) -> Outcome:
        """Start closing without the proxy; `finalize_close` refunds everything after the close delay."""

    @abstractmethod
    def finalize_close(self, wallet: Wallet, channel: str) -> Outcome: ...

    # ---- worker ----
    @abstractmethod
    def redeem(self, wallet: Wallet, proxy: str, voucher: Voucher) -> Outcome:
        """Redeem a payout voucher on the worker channel (deployed on first use); the proxy pays the wallet."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files or connections."""
