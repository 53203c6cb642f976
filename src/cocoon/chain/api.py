"""The devnet's HTTP API: the toncenter-v2 methods cocoon uses, under `/api/v2/`, plus `/devnet/info` and
`/devnet/faucet`.

Answers are toncenter's: `{"ok": true, "result": ...}`, or `{"ok": false, "error": ..., "code": ...}` with that
HTTP status (422: a parameter is missing or malformed; 500 with the liteserver's words: an external message its
wallet would not accept; 404: no such method). Addresses are shown user-friendly (bounceable, URL-safe), hashes and
BOCs in base64, amounts as decimal strings. Everything that touches the chain runs in a thread: the emulator and
SQLite block.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import logging
from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any

from aiohttp import web
from pytoniq_core import Address, Cell
from pytoniq_core.tlb.custom.wallet import WalletV4Data
from pytoniq_core.tlb.transaction import InternalMsgInfo, MessageAny

from cocoon.chain.devnet import Devnet, DevnetError
from cocoon.ledger.chain import StoredTx
from cocoon.ledger.contracts import config_boc, config_params, config_with_global_id
from cocoon.ledger.ton import DEFAULT_WALLET_ID, WALLET_V4R2_CODE_HASH
from cocoon.ledger.toncenter import stack_from_json, stack_to_json
from cocoon.ledger.tvm import TvmError, transaction_messages
from cocoon.ledger.wallet import raw_address

MAX_TRANSACTIONS = 100  # per getTransactions
NO_STATE_EXIT = -13  # what a get-method on an account without code answers (tonlib's "account not initialized")
DEVNET = web.AppKey("devnet", Devnet)
INTERVAL = web.AppKey("interval", float)
CALLS = web.AppKey("calls", collections.Counter)  # chain API requests served, by method (measuring API use)

log = logging.getLogger("cocoon.chain")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, message: str, code: int = 422) -> None:
        super().__init__(message)
        self.code = code


def _answer(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _refusal(error: str, code: int) -> web.Response:
    return web.json_response({"ok": False, "error": error, "code": code}, status=code)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except (ApiError, DevnetError) as exc:
        return _refusal(str(exc), exc.code)
    except web.HTTPException as exc:
        return _refusal(exc.reason, exc.status)
    except Exception as exc:  # a bug: say so without details, log it
        log.exception("devnet API failure", extra={"fields": {"path": request.path}})
        return _refusal(f"internal error ({type(exc).__name__})", 500)


async def _params(request: web.Request) -> dict[str, Any]:
    """Query parameters, and for POST the JSON body's fields over them."""
    params: dict[str, Any] = dict(request.query)
    if request.method == "POST":
        try:
            body = await request.json()
        except ValueError:
            raise ApiError("the body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError("the body is a JSON object")
        params.update(body)
    return params


def _address(params: dict[str, Any], name: str = "address") -> str:
    value = params.get(name)
    if not isinstance(value, str):
        raise ApiError(f"parameter {name} is required")
    try:
        return raw_address(value)
    except ValueError:
        raise ApiError(f"incorrect address {value[:80]!r}", 416) from None


def _int(params: dict[str, Any], name: str, default: int | None = None) -> int:
    value = params.get(name, default)
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ApiError(f"parameter {name} must be an integer") from None


def friendly(address: str) -> str:
    return Address(address).to_str(is_user_friendly=True, is_bounceable=True, is_url_safe=True)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---- reads ----
def _account_info(devnet: Devnet, address: str) -> dict[str, Any]:
    chain = devnet.chain
    acc = chain.account(address)
    last = chain.transactions_of(address, 1)
    state = "uninitialized" if acc is None else {"uninit": "uninitialized"}.get(acc.status, acc.status)
    return {
        "@type": "raw.fullAccountState",
        "balance": str(chain.balance(address)),
        "code": _b64(acc.code.to_boc()) if acc is not None and acc.code is not None else "",
        "data": _b64(acc.data.to_boc()) if acc is not None and acc.data is not None else "",
        "last_transaction_id": {"@type": "internal.transactionId", "lt": str(last[0].lt) if last else "0",
                                "hash": _b64(last[0].hash if last else bytes(32))},
        "frozen_hash": "",
        "sync_utime": chain.now(),
        "state": state,
    }


def _wallet_info(devnet: Devnet, address: str) -> dict[str, Any]:
    info = _account_info(devnet, address)
    acc = devnet.chain.account(address)
    out: dict[str, Any] = {"wallet": False, "balance": info["balance"], "account_state": info["state"],
                           "last_transaction_id": info["last_transaction_id"]}
    if acc is not None and acc.code is not None and acc.data is not None and \
            acc.code.hash.hex() == WALLET_V4R2_CODE_HASH:
        data = WalletV4Data.deserialize(acc.data.begin_parse())
        out.update(wallet=True, wallet_type="wallet v4 r2", seqno=data.seqno, wallet_id=data.wallet_id)
    return out


def _message_json(cell: Cell | None) -> dict[str, Any]:
    if cell is None:
        return {"@type": "raw.message", "hash": "", "source": "", "destination": "", "value": "0",
                "fwd_fee": "0", "ihr_fee": "0", "created_lt": "0", "body_hash": "",
                "msg_data": {"@type": "msg.dataRaw", "body": "", "init_state": ""}, "message": ""}
    msg = MessageAny.deserialize(cell.begin_parse())
    info = msg.info
    internal = isinstance(info, InternalMsgInfo)
    src = getattr(info, "src", None)
    dest = getattr(info, "dest", None)
    return {
        "@type": "raw.message",
        "hash": _b64(cell.hash),
        "source": friendly(raw_address(src)) if isinstance(src, Address) else "",
        "destination": friendly(raw_address(dest)) if isinstance(dest, Address) else "",
        "value": str(info.value.grams if internal else 0),
        "fwd_fee": str(info.fwd_fee if internal else 0),
        "ihr_fee": str(info.ihr_fee if internal else 0),
        "created_lt": str(info.created_lt if internal else 0),
        "body_hash": _b64(msg.body.hash),
        "msg_data": {"@type": "msg.dataRaw", "body": _b64(msg.body.to_boc()),
                     "init_state": _b64(msg.init.serialize().to_boc()) if msg.init is not None else ""},
        "message": "",
    }


def _transaction_json(tx: StoredTx) -> dict[str, Any]:
    inbound = Cell.one_from_boc(tx.in_msg)
    outs: list[Cell] = transaction_messages(Cell.one_from_boc(tx.boc))[1] if tx.boc else []
    return {
        "@type": "raw.transaction",
        "address": {"@type": "accountAddress", "account_address": friendly(tx.address)},
        "utime": tx.now,
        "data": _b64(tx.boc) if tx.boc else "",
        "transaction_id": {"@type": "internal.transactionId", "lt": str(tx.lt), "hash": _b64(tx.hash)},
        "fee": str(tx.total_fees),
        "storage_fee": str(tx.storage_fee),
        "other_fee": str(tx.total_fees - tx.storage_fee),
        "in_msg": _message_json(inbound),
        "out_msgs": [_message_json(c) for c in outs],
    }


def _transactions(devnet: Devnet, params: dict[str, Any]) -> list[dict[str, Any]]:
    address = _address(params)
    limit = _int(params, "limit", 10)
    if not 1 <= limit <= MAX_TRANSACTIONS:
        raise ApiError(f"limit is 1 to {MAX_TRANSACTIONS}")
    start = params.get("lt")
    before = _int(params, "lt") + 1 if start not in (None, "") else None  # from this transaction, older
    to_lt = _int(params, "to_lt", 0)
    return [_transaction_json(t) for t in devnet.chain.transactions_of(address, limit, before) if t.lt > to_lt]


def _run_get(devnet: Devnet, params: dict[str, Any]) -> dict[str, Any]:
    address = _address(params)
    method = params.get("method")
    if not isinstance(method, str) or not method:
        raise ApiError("parameter method is required (a get-method's name)")
    try:
        stack = stack_from_json(params.get("stack", []), arguments=True)
    except Exception as exc:  # pytoniq's BOC errors are bare exceptions
        raise ApiError(f"stack: {str(exc)[:200]}") from None
    acc = devnet.chain.account(address)
    if acc is None or acc.status != "active":
        return {"@type": "smc.runResult", "gas_used": 0, "stack": [], "exit_code": NO_STATE_EXIT}
    try:
        values = devnet.chain.get(address, method, stack)
    except TvmError as exc:
        code = exc.exit_code if isinstance(exc.exit_code, int) else 11
        return {"@type": "smc.runResult", "gas_used": 0, "stack": [], "exit_code": code}
    return {"@type": "smc.runResult", "gas_used": 0, "stack": stack_to_json(values), "exit_code": 0}


def _masterchain_info(devnet: Devnet) -> dict[str, Any]:
    def block(seqno: int) -> dict[str, Any]:
        digest = hashlib.sha256(b"cocoon-devnet-block" + devnet.root.encode() + seqno.to_bytes(8, "big")).digest()
        return {"@type": "ton.blockIdExt", "workchain": -1, "shard": "-9223372036854775808", "seqno": seqno,
                "root_hash": _b64(digest), "file_hash": _b64(digest)}

    return {"@type": "blocks.masterchainInfo", "last": block(devnet.seqno()), "init": block(0),
            "state_root_hash": block(devnet.seqno())["root_hash"]}


@cache
def _chain_config(global_id: int) -> dict[int, Cell]:
    """The chain's config by parameter number: parsing and re-serialising the 115 kB config costs ~0.1 s, and
    every node asks for param 19 when it starts."""
    return config_params(config_with_global_id(config_boc(), global_id))


def _config_param(devnet: Devnet, params: dict[str, Any]) -> dict[str, Any]:
    number = _int(params, "config_id")
    cell = _chain_config(devnet.chain.global_id).get(number)
    if cell is None:
        raise ApiError(f"config param {number} is not set on this chain", 404)
    return {"@type": "configInfo", "config": {"@type": "tvm.cell", "bytes": _b64(cell.to_boc())}}


def _boc(params: dict[str, Any]) -> bytes:
    value = params.get("boc")
    if not isinstance(value, str):
        raise ApiError("parameter boc is required (base64)")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise ApiError("boc is not base64") from None


# ---- routes ----
def make_app(devnet: Devnet, block_interval_s: float) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=1024 * 1024)
    app[DEVNET] = devnet
    app[INTERVAL] = block_interval_s
    calls: collections.Counter[str] = collections.Counter()
    app[CALLS] = calls

    def read(fn: Callable[[Devnet, dict[str, Any]], Any]) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            calls[request.path.rsplit("/", 1)[-1]] += 1
            params = await _params(request)
            return _answer(await asyncio.to_thread(fn, devnet, params))
        return handler

    routes: dict[str, Callable[[Devnet, dict[str, Any]], Any]] = {
        "getAddressInformation": lambda d, p: _account_info(d, _address(p)),
        "getAddressBalance": lambda d, p: str(d.chain.balance(_address(p))),
        "getAddressState": lambda d, p: _account_info(d, _address(p))["state"],
        "getWalletInformation": lambda d, p: _wallet_info(d, _address(p)),
        "getTransactions": _transactions,
        "runGetMethod": _run_get,
        "getMasterchainInfo": lambda d, p: _masterchain_info(d),
        "getConfigParam": _config_param,
        "sendBoc": lambda d, p: d.submit(_boc(p)) and {"@type": "ok"},
        "sendBocReturnHash": lambda d, p: {"@type": "raw.extMessageInfo", "hash": _b64(d.submit(_boc(p)))},
    }
    for name, fn in routes.items():
        app.router.add_route("*", f"/api/v2/{name}", read(fn))

    async def info(request: web.Request) -> web.Response:
        return _answer({"root": devnet.root, "global_id": devnet.chain.global_id, "faucet": devnet.faucet.address,
                        "seqno": devnet.seqno(), "block_interval_s": block_interval_s, "now": devnet.chain.now(),
                        "wallet_id": DEFAULT_WALLET_ID,
                        "owner": await asyncio.to_thread(devnet.ledger.root_owner_address),
                        "api_calls": sum(calls.values()), "api_calls_by_method": dict(calls)})

    async def faucet(request: web.Request) -> web.Response:
        params = await _params(request)
        address, amount = _address(params), _int(params, "amount")
        result = await asyncio.wrap_future(devnet.request_faucet(address, amount))
        return _answer({"address": friendly(result.address), "amount": str(result.amount), "lt": str(result.lt),
                        "balance": str(result.balance)})

    async def advance(request: web.Request) -> web.Response:
        seconds = _int(await _params(request), "seconds")
        if not 0 <= seconds <= 10 * 365 * 86400:
            raise ApiError("seconds is 0 to ten years")
        return _answer({"now": await asyncio.to_thread(devnet.chain.advance, seconds)})

    async def audit(request: web.Request) -> web.Response:
        a = await asyncio.to_thread(devnet.chain.audit)
        return _answer({"minted": str(a.minted), "wallets": str(a.wallets), "accounts": str(a.accounts),
                        "fees": str(a.fees), "balanced": a.balanced})

    app.router.add_get("/devnet/info", info)
    app.router.add_post("/devnet/faucet", faucet)
    # a test network's privileges: move chain time forward (close delays pass at once); every coin accounted for
    app.router.add_post("/devnet/advance", advance)
    app.router.add_get("/devnet/audit", audit)
    return app


async def produce_blocks(devnet: Devnet, interval_s: float, stop: asyncio.Event) -> None:
    """A block every `interval_s` until `stop`."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except TimeoutError:
            pass
        await asyncio.to_thread(devnet.produce_block)

