"""Cells of every storage layout and message body in src/cocoon/contracts/README.md, for both ledger backends.

Field order and widths follow the README's TL-B; tests compare these cells bit for bit with the ones the sandbox
tests sent (vectors/lifecycle.json).
"""

from __future__ import annotations

from pytoniq_core import Address, Builder, Cell, begin_cell
from pytoniq_core.tlb.account import StateInit
from pytoniq_core.tlb.block import CurrencyCollection
from pytoniq_core.tlb.transaction import InternalMsgInfo

from cocoon.config import Prices
from cocoon.core.merkle import EMPTY_ROOT
from cocoon.ledger.base import Terms
from cocoon.ledger.contracts import TREE_HEAD_TAG, HashKind, Op, code

# ---- storage ----


def params_cell(prices: Prices, terms: Terms) -> Cell:
    return (begin_cell().store_coins(prices.price_per_token).store_coins(prices.worker_fee_per_token)
            .store_uint(prices.prompt_multiplier, 32).store_uint(prices.cached_multiplier, 32)
            .store_uint(prices.completion_multiplier, 32).store_uint(prices.reasoning_multiplier, 32)
            .store_uint(terms.client_close_delay, 32).store_uint(terms.proxy_close_delay, 32)
            .store_coins(terms.min_client_stake).store_coins(terms.min_proxy_stake)
            .store_uint(prices.max_coefficient, 32)
            .store_coins(prices.price_per_media_second).store_coins(prices.worker_fee_per_media_second).end_cell())


def codes_cell() -> Cell:
    return (begin_cell().store_ref(code("proxy")).store_ref(code("client_channel"))
            .store_ref(code("worker_channel")).end_cell())


def root_data(owner: Address, prices: Prices, terms: Terms, log_key: bytes) -> Cell:
    empty_registry = begin_cell().store_uint(0, 4).end_cell()  # four empty HashmapE
    return (begin_cell().store_address(owner).store_uint(0, 32).store_ref(params_cell(prices, terms))
            .store_ref(codes_cell()).store_ref(empty_registry).store_ref(empty_log(log_key)).end_cell())


def empty_log(key: bytes) -> Cell:
    """The registry log before its first entry: its signing key, size 0, the empty tree's root, nothing signed."""
    return (begin_cell().store_bytes(key).store_uint(0, 64).store_bytes(EMPTY_ROOT).store_uint(0, 64)
            .store_bytes(EMPTY_ROOT).store_maybe_ref(None).store_dict(None).store_dict(None).end_cell())


def tree_head_cell(global_id: int, root: Address, size: int, root_hash: bytes) -> Cell:
    """What the owner signs (its hash) to vouch for the registry log at `size` leaves with root `root_hash`."""
    return (begin_cell().store_uint(TREE_HEAD_TAG, 32).store_int(global_id, 32).store_address(root)
            .store_uint(size, 64).store_bytes(root_hash).end_cell())


def proxy_init_data(root: Address, owner: Address, pubkey: bytes, terms: Terms, root_version: int) -> Cell:
    ident = begin_cell().store_address(root).store_address(owner).store_bytes(pubkey).end_cell()
    pparams = (begin_cell().store_uint(terms.client_close_delay, 32).store_uint(terms.proxy_close_delay, 32)
               .store_coins(terms.min_client_stake).store_coins(terms.min_proxy_stake)
               .store_uint(root_version, 32).end_cell())
    pcodes = begin_cell().store_ref(code("client_channel")).store_ref(code("worker_channel")).end_cell()
    return (begin_cell().store_uint(0, 2).store_coins(0).store_coins(0).store_coins(0).store_uint(0, 32)
            .store_uint(0, 32).store_uint(0, 64).store_uint(0, 256)
            .store_ref(ident).store_ref(pparams).store_ref(pcodes).end_cell())


def client_init_data(proxy: Address, client: Address, pubkey: bytes, nonce: int, close_delay: int,
                     min_stake: int) -> Cell:
    ident = (begin_cell().store_address(proxy).store_address(client).store_bytes(pubkey).store_uint(nonce, 32)
             .store_uint(close_delay, 32).store_coins(min_stake).end_cell())
    return (begin_cell().store_uint(0, 2).store_coins(0).store_coins(0).store_coins(0).store_uint(0, 64)
            .store_uint(0, 32).store_ref(ident).end_cell())


def worker_init_data(proxy: Address, worker: Address, pubkey: bytes) -> Cell:
    ident = begin_cell().store_address(proxy).store_address(worker).store_bytes(pubkey).end_cell()
    return begin_cell().store_uint(0, 64).store_coins(0).store_ref(ident).end_cell()


def state_init(contract: str, data: Cell) -> StateInit:
    return StateInit(code=code(contract), data=data)


def address_of(init: StateInit, workchain: int = 0) -> Address:
    return Address((workchain, init.serialize().hash))


# ---- message bodies: op:uint32 query_id:uint64, then the fields ----


def _head(op: Op, query_id: int = 0) -> Builder:
    return begin_cell().store_uint(op, 32).store_uint(query_id, 64)


def set_params(prices: Prices, terms: Terms, query_id: int = 0) -> Cell:
    return _head(Op.ROOT_SET_PARAMS, query_id).store_ref(params_cell(prices, terms)).end_cell()


def set_hash(kind: HashKind, value: bytes, present: bool, query_id: int = 0) -> Cell:
    return _head(Op.ROOT_SET_HASH, query_id).store_uint(kind, 8).store_bytes(value).store_bit(present).end_cell()


def register_proxy(owner: Address, pubkey: bytes, endpoint: str, query_id: int = 0) -> Cell:
    return (_head(Op.ROOT_REGISTER_PROXY, query_id).store_address(owner).store_bytes(pubkey)
            .store_ref(begin_cell().store_snake_string(endpoint).end_cell()).end_cell())


def sign_head(size: int, root_hash: bytes, signature: bytes, query_id: int = 0) -> Cell:
    return (_head(Op.ROOT_SIGN_HEAD, query_id).store_uint(size, 64).store_bytes(root_hash)
            .store_ref(begin_cell().store_bytes(signature).end_cell()).end_cell())


def set_log_key(key: bytes, query_id: int = 0) -> Cell:
    return _head(Op.ROOT_SET_LOG_KEY, query_id).store_bytes(key).end_cell()


def set_owner(owner: Address, query_id: int = 0) -> Cell:
    return _head(Op.ROOT_SET_OWNER, query_id).store_address(owner).end_cell()


def op_only(op: Op, query_id: int = 0) -> Cell:
    """add_stake, start_close, withdraw (proxy), request_close, finalize_close: no fields."""
    return _head(op, query_id).end_cell()


def commit(seqno: int, state_hash: bytes, query_id: int = 0) -> Cell:
    return _head(Op.PROXY_COMMIT, query_id).store_uint(seqno, 64).store_bytes(state_hash).end_cell()


def deposit(stake_raise: int, query_id: int = 0) -> Cell:
    return _head(Op.DEPOSIT, query_id).store_coins(stake_raise).end_cell()


def withdraw(amount: int, query_id: int = 0) -> Cell:
    return _head(Op.WITHDRAW, query_id).store_coins(amount).end_cell()


def voucher_body(op: Op, seqno: int, amount: int, signature: bytes, query_id: int = 0) -> Cell:
    """charge, close_final and redeem carry a voucher as `seqno:uint64 amount:Coins signature:bits512`."""
    return _head(op, query_id).store_uint(seqno, 64).store_coins(amount).store_bytes(signature).end_cell()


# ---- messages ----


def internal_message(src: Address | None, dest: Address, value: int, body: Cell, init: StateInit | None = None,
                     bounce: bool = True) -> Cell:
    """An internal message as a wallet hands it to the chain: fees, logical time and time left zero for the
    validators to fill (the sandbox injects the same); `src` None (addr_none) lets a wallet contract fill it."""
    info = InternalMsgInfo(ihr_disabled=True, bounce=bounce, bounced=False, src=src, dest=dest,
                           value=CurrencyCollection(value), ihr_fee=0, fwd_fee=0, created_lt=0, created_at=0)
    return message_cell(info.serialize(), body, init)


def message_cell(info: Cell, body: Cell, init: StateInit | None) -> Cell:
    """`Message X` with the StateInit and the body inline when they fit in the header's cell, else in references."""
    b = begin_cell().store_cell(info)
    init_cell = init.serialize() if init is not None else None
    if init_cell is None:
        b.store_bit(0)
    elif b.available_bits - 2 >= len(init_cell.bits) + len(body.bits) and \
            b.available_refs >= len(init_cell.refs) + len(body.refs):
        b.store_bit(1).store_bit(0).store_cell(init_cell)
    else:
        b.store_bit(1).store_bit(1).store_ref(init_cell)
    if b.available_bits - 1 >= len(body.bits) and b.available_refs >= len(body.refs):
        b.store_bit(0).store_cell(body)
    else:
        b.store_bit(1).store_ref(body)
    return b.end_cell()
