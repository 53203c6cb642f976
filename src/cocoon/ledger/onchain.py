"""The Ledger interface spoken in the contracts' own terms: each operation is one message from a wallet (body,
value, StateInit, as the contracts README specifies), each read a get-method. A backend supplies three things:
how to send a message from a wallet, how to run a get-method, and whether an account is deployed.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

from pytoniq_core import Address, Cell, Slice, begin_cell
from pytoniq_core.tlb.account import StateInit

from cocoon.config import Prices
from cocoon.ledger import layouts
from cocoon.ledger.base import (
    ChannelState,
    Ledger,
    LedgerError,
    Outcome,
    ProxyState,
    RootParams,
    Terms,
    WorkerChannelState,
    one_by_one,
)
from cocoon.ledger.contracts import (
    CHANNEL_STATES,
    DEPOSIT_FEE,
    MIN_OP_VALUE,
    PROXY_STATES,
    HashKind,
    Op,
    Tag,
)
from cocoon.ledger.vouchers import Voucher
from cocoon.ledger.wallet import Wallet, raw_address


@dataclass(frozen=True)
class Message:
    """One operation as the message a wallet sends."""

    what: str  # the operation's name, for errors and logs
    dest: str
    value: int
    body: Cell
    init: StateInit | None = None
    bounce: bool = True


@dataclass(frozen=True)
class RegisteredProxy:
    """An entry of the root's proxy registry."""

    address: str  # the proxy contract
    pubkey: bytes  # its voucher key
    owner: str
    params_version: int
    endpoint: str  # where its RA-TLS listener is (host:port)


@dataclass(frozen=True)
class ProxyIdentity:
    pubkey: bytes
    client_close_delay: int
    min_client_stake: int


class OnChainLedger(Ledger):
    def __init__(self, root: str) -> None:
        self.root = raw_address(root)
        self._identities: dict[str, ProxyIdentity] = {}
        self._global_id: int | None = None

    # ---- what a backend provides ----
    @abstractmethod
    def submit(self, wallet: Wallet, message: Message) -> Outcome:
        """Send `message` from `wallet`; raise LedgerRefused when a contract refuses it (where that is known)."""

    def submit_batch(self, wallet: Wallet, messages: list[Message]) -> list[Outcome | LedgerError]:
        """Several messages from one wallet: each one's outcome, or the error it met (a contract's refusal, a
        bounce). A backend may send them together (ton: four per wallet transfer); by default one by one."""
        return one_by_one(lambda message: self.submit(wallet, message), messages)

    @abstractmethod
    def run_get(self, address: str, method: str, stack: list[Any] | None = None) -> list[Any]: ...

    @abstractmethod
    def is_active(self, address: str) -> bool: ...

    # ---- the registry ----
    def read_root(self) -> RootParams:
        (version,) = self.run_get(self.root, "get_version")
        p = self.run_get(self.root, "get_params")
        media = self.run_get(self.root, "get_media_prices")
        prices = Prices(price_per_token=p[0], worker_fee_per_token=p[1], prompt_multiplier=p[2],
                        cached_multiplier=p[3], completion_multiplier=p[4], reasoning_multiplier=p[5],
                        max_coefficient=p[10], price_per_media_second=media[0], worker_fee_per_media_second=media[1])
        terms = Terms(client_close_delay=p[6], proxy_close_delay=p[7], min_client_stake=p[8], min_proxy_stake=p[9])
        log_size, _root, log_signed_size, *_ = self.run_get(self.root, "get_log")
        return RootParams(version=version, prices=prices, terms=terms,
                          proxy_image_hashes=self._allowed(HashKind.PROXY_IMAGE),
                          worker_image_hashes=self._allowed(HashKind.WORKER_IMAGE),
                          model_hashes=self._allowed(HashKind.MODEL), log_size=log_size,
                          log_signed_size=log_signed_size)

    def _allowed(self, kind: HashKind) -> frozenset[str]:
        (cell,) = self.run_get(self.root, "get_allowed", [int(kind)])
        if cell is None:
            return frozenset()
        keys = Slice.one_from_boc(cell.to_boc()).load_hashmap(256) or {}
        return frozenset(f"{k:064x}" for k in keys)

    def root_owner_address(self) -> str:
        """The wallet that may change the registry."""
        (owner,) = self.run_get(self.root, "get_owner")
        return raw_address((owner.begin_parse() if isinstance(owner, Cell) else owner).load_address())

    def global_id(self) -> int:
        # asked of the root contract: what the chain tells its contracts (ConfigParam 19), read once
        if self._global_id is None:
            (self._global_id,) = self.run_get(self.root, "get_global_id")
        return self._global_id

    def proxies(self) -> list[RegisteredProxy]:
        """Every proxy the root registry lists."""
        (cell,) = self.run_get(self.root, "get_proxies")
        if cell is None:
            return []
        entries = Slice.one_from_boc(cell.to_boc()).load_hashmap(256, value_deserializer=lambda s: s) or {}
        out = []
        for key, entry in sorted(entries.items()):
            pubkey, owner = entry.load_bytes(32), raw_address(entry.load_address())
            version, endpoint = entry.load_uint(32), entry.load_ref().begin_parse().load_snake_string()
            out.append(RegisteredProxy(f"0:{key:064x}", pubkey, owner, version, endpoint))
        return out

    def find_proxy(self, endpoint: str) -> RegisteredProxy:
        """The registered proxy listening at `endpoint` (host:port); LedgerError if none is."""
        for entry in self.proxies():
            if entry.endpoint == endpoint:
                return entry
        raise LedgerError(f"no proxy registered in root {self.root} at {endpoint}")

    def proxy_address(self, owner: str, pubkey: bytes) -> str:
        """The proxy contract a registration of (`owner`, `pubkey`) would deploy now."""
        (addr,) = self.run_get(self.root, "get_proxy_address", [_address_slice(owner), int.from_bytes(pubkey, "big")])
        # a toncenter-style API returns slices as cells
        return raw_address((addr.begin_parse() if isinstance(addr, Cell) else addr).load_address())

    def sign_registry_head(self, wallet: Wallet) -> Outcome:
        """Sign the registry log's current tree head with `wallet`'s key (the owner's: the log key the root holds)
        and hand it to the root, which keeps it as the signed head (ledger/translog.py)."""
        size, root, *_ = self.run_get(self.root, "get_log")
        root_hash = root.to_bytes(32, "big")
        signature = wallet.sign(layouts.tree_head_cell(self.global_id(), Address(self.root), size, root_hash).hash)
        return self.submit(wallet, Message("sign_head", self.root, MIN_OP_VALUE,
                                           layouts.sign_head(size, root_hash, signature)))

    # ---- addresses ----
    def client_channel_address(self, proxy: str, client: str, nonce: int = 0) -> str:
        return _raw(layouts.address_of(self.client_channel_init(proxy, client, nonce)))

    def worker_channel_address(self, proxy: str, worker: str) -> str:
        return _raw(layouts.address_of(self.worker_channel_init(proxy, worker)))

    def client_channel_init(self, proxy: str, client: str, nonce: int) -> StateInit:
        ident = self.proxy_identity(proxy)
        return layouts.state_init("client_channel", layouts.client_init_data(
            Address(proxy), Address(client), ident.pubkey, nonce, ident.client_close_delay, ident.min_client_stake))

    def worker_channel_init(self, proxy: str, worker: str) -> StateInit:
        ident = self.proxy_identity(proxy)
        return layouts.state_init("worker_channel",
                                  layouts.worker_init_data(Address(proxy), Address(worker), ident.pubkey))

    def proxy_key(self, proxy: str) -> bytes:
        return self.proxy_identity(proxy).pubkey

    def proxy_identity(self, proxy: str) -> ProxyIdentity:
        """A proxy contract's voucher key and channel terms: fixed at its deployment, so read once."""
        proxy = raw_address(proxy)
        ident = self._identities.get(proxy)
        if ident is None:
            _root, _owner, pubkey = self.run_get(proxy, "get_identity")
            close_delay, _proxy_delay, min_stake, _proxy_stake, _version = self.run_get(proxy, "get_proxy_params")
            ident = self._identities[proxy] = ProxyIdentity(pubkey.to_bytes(32, "big"), close_delay, min_stake)
        return ident

    # ---- reads ----
    def channel_state(self, channel: str) -> ChannelState:
        channel = raw_address(channel)
        if not self.is_active(channel):
            return ChannelState(channel, "new", 0, 0, 0, 0, 0)
        s = self.run_get(channel, "get_channel_state")
        return ChannelState(channel, CHANNEL_STATES[s[0]], s[1], s[2], s[3], s[4], s[5])

    def proxy_state(self, proxy: str) -> ProxyState:
        proxy = raw_address(proxy)
        s = self.run_get(proxy, "get_proxy_state")
        seqno, state_hash = self.last_commit(proxy)
        return ProxyState(proxy, PROXY_STATES[s[0]], s[1], s[2], s[3], s[4], s[5], seqno, state_hash)

    def worker_channel_state(self, channel: str) -> WorkerChannelState:
        channel = raw_address(channel)
        if not self.is_active(channel):
            return WorkerChannelState(channel, 0, 0)
        seqno, paid = self.run_get(channel, "get_worker_state")
        return WorkerChannelState(channel, seqno, paid)

    def last_commit(self, proxy: str) -> tuple[int, bytes]:
        seqno, state_hash = self.run_get(raw_address(proxy), "get_commit")
        return seqno, state_hash.to_bytes(32, "big")

    # ---- operations ----
    def add_proxy_stake(self, wallet: Wallet, proxy: str, amount: int) -> Outcome:
        return self.submit(wallet, Message("add_stake", raw_address(proxy), amount + DEPOSIT_FEE,
                                           layouts.op_only(Op.PROXY_ADD_STAKE)))

    def commit(self, wallet: Wallet, proxy: str, seqno: int, state_hash: bytes) -> Outcome:
        return self.submit(wallet, Message("commit", raw_address(proxy), MIN_OP_VALUE,
                                           layouts.commit(seqno, state_hash)))

    def settle_charge(self, wallet: Wallet, voucher: Voucher) -> Outcome:
        return self.submit(wallet, _charge_message(voucher))

    def settle_charges(self, wallet: Wallet, vouchers: list[Voucher]) -> list[Outcome | LedgerError]:
        return self.submit_batch(wallet, [_charge_message(v) for v in vouchers])

    def open_channel(self, wallet: Wallet, proxy: str, deposit: int, stake: int, nonce: int = 0) -> Outcome:
        init = self.client_channel_init(proxy, wallet.address, nonce)
        return self.submit(wallet, Message("open_channel", _raw(layouts.address_of(init)), deposit + DEPOSIT_FEE,
                                           layouts.deposit(stake), init))

    def deposit(self, wallet: Wallet, channel: str, amount: int, stake_raise: int = 0) -> Outcome:
        return self.submit(wallet, Message("deposit", raw_address(channel), amount + DEPOSIT_FEE,
                                           layouts.deposit(stake_raise)))

    def withdraw(self, wallet: Wallet, channel: str, amount: int) -> Outcome:
        return self.submit(wallet, Message("withdraw", raw_address(channel), MIN_OP_VALUE, layouts.withdraw(amount)))

    def request_close(self, wallet: Wallet, channel: str) -> Outcome:
        return self.submit(wallet, Message("request_close", raw_address(channel), MIN_OP_VALUE,
                                           layouts.op_only(Op.REQUEST_CLOSE)))

    def finalize_close(self, wallet: Wallet, channel: str) -> Outcome:
        return self.submit(wallet, Message("finalize_close", raw_address(channel), MIN_OP_VALUE,
                                           layouts.op_only(Op.FINALIZE_CLOSE)))

    def redeem(self, wallet: Wallet, proxy: str, voucher: Voucher) -> Outcome:
        if voucher.tag != Tag.PAYOUT:
            raise LedgerError("only a payout voucher can be redeemed on a worker channel")
        init = self.worker_channel_init(proxy, wallet.address)
        channel = _raw(layouts.address_of(init))
        if channel != voucher.contract:
            raise LedgerError(f"the voucher is for {voucher.contract}, this worker's channel is {channel}")
        body = layouts.voucher_body(Op.REDEEM, voucher.seqno, voucher.amount, voucher.signature)
        # The StateInit travels only while the channel does not exist yet: it costs forwarding fees.
        return self.submit(wallet, Message("redeem", channel, MIN_OP_VALUE, body,
                                           None if self.is_active(channel) else init))


def _charge_message(voucher: Voucher) -> Message:
    ops = {Tag.CHARGE: Op.CHARGE, Tag.FINAL: Op.CLOSE_FINAL}
    tag = Tag(voucher.tag)
    if tag not in ops:
        raise LedgerError(f"a {tag.name.lower()} voucher is not a client channel's")
    body = layouts.voucher_body(ops[tag], voucher.seqno, voucher.amount, voucher.signature)
    return Message(ops[tag].name.lower(), voucher.contract, MIN_OP_VALUE, body)


def _raw(address: Address) -> str:
    return address.to_str(is_user_friendly=False)


def _address_slice(address: str) -> Slice:
    return begin_cell().store_address(Address(address)).end_cell().begin_parse()
