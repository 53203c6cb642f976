"""The `ton` backend's transport over a toncenter-v2 HTTP API (toncenter.com, a self-hosted ton-http-api, or
`cocoon chain`): get-methods, account states, sending an external message and finding what it caused.

The API's answers are `{"ok": true, "result": ...}` or `{"ok": false, "error": ..., "code": ...}`. A request is
retried with exponential backoff, a bounded number of times, when the endpoint is unreachable, slow, overloaded (429,
5xx) or answers something that is not that shape; then a ChainApiError says which endpoint, which method, how many
attempts and the last reason. A well-formed refusal of a request (4xx) is not retried.

Sending (`send_boc`) resends the same bytes only (safe: the wallet accepts an external message once, by seqno and
`valid_until`, see ledger/ton.py), then waits for the wallet's transaction, found by the message's hash, and follows
every internal message it caused to the transaction that received it (`Trace`), until `valid_until` plus
`settle_s`. If the endpoint refused every connection, nothing was sent: ChainApiError. If the outcome cannot be
learned by then, OutcomeUnknown names the message, so that nobody signs the operation again blindly.

Stacks are in the API's JSON form (`stack_to_json` / `stack_from_json`, shared with `cocoon chain`): numbers as
`["num", "0x.."]`, cells and slices as `["cell", {"bytes": base64 BOC}]` (the API does not tell them apart: a caller
expecting a slice gets a cell), null as an empty list; arguments as `["num", ..]`, `["tvm.Cell", b64]`,
`["tvm.Slice", b64]`.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable
from typing import Any

from pytoniq_core import Cell, Slice
from pytoniq_core.tlb.transaction import InternalMsgInfo, MessageAny, Transaction

from cocoon.ledger.base import LedgerError
from cocoon.ledger.ton import SeenTx, Trace
from cocoon.ledger.tvm import transaction_messages
from cocoon.ledger.wallet import raw_address

MAX_TRACE = 64  # transactions followed for one operation (a message loop stops here)
PAGE = 32  # newest transactions read per look for a message


class ChainApiError(LedgerError):
    """The chain's API could not answer (after retries), or refused the request."""

    def __init__(self, message: str, *, code: int | None = None, refused: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.refused = refused  # a well-formed refusal: the same request would be refused again


class OutcomeUnknown(LedgerError):
    """A message was (maybe) sent but its transaction was not seen: do not sign the operation again before checking
    whether it executed (it cannot execute after its `valid_until`)."""


def stack_to_json(values: list[Any]) -> list[list[Any]]:
    """A stack (bottom first; int, Cell, Slice, None) as the API answers it."""
    out: list[list[Any]] = []
    for v in values:
        if isinstance(v, bool) or v is None:
            out.append(["list", {"@type": "tvm.list", "elements": []}] if v is None else ["num", hex(int(v))])
        elif isinstance(v, int):
            out.append(["num", hex(v)])
        elif isinstance(v, Cell | Slice):
            cell = v.to_cell() if isinstance(v, Slice) else v
            out.append(["cell", {"bytes": base64.b64encode(cell.to_boc()).decode()}])
        else:
            raise ValueError(f"a get-method's stack holds a {type(v).__name__}, which this API cannot show")
    return out


def stack_args_to_json(values: list[Any]) -> list[list[Any]]:
    """A get-method's arguments as the API takes them."""
    out: list[list[Any]] = []
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool):
            out.append(["num", hex(v)])
        elif isinstance(v, Slice):
            out.append(["tvm.Slice", base64.b64encode(v.to_cell().to_boc()).decode()])
        elif isinstance(v, Cell):
            out.append(["tvm.Cell", base64.b64encode(v.to_boc()).decode()])
        else:
            raise ValueError(f"a get-method argument cannot be a {type(v).__name__}")
    return out


def stack_from_json(entries: Any, *, arguments: bool = False) -> list[Any]:
    """The API's stack JSON (an answer's, or with `arguments` a request's) as values; ValueError when malformed."""
    if not isinstance(entries, list):
        raise ValueError("a stack is a list")
    out: list[Any] = []
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise ValueError(f"a stack entry is [type, value], not {str(entry)[:80]}")
        kind, value = entry
        if kind in ("num", "number", "int"):
            out.append(int(value, 0) if isinstance(value, str) else _int(value))
        elif kind in ("cell", "slice", "tvm.Cell", "tvm.Slice"):
            data = value.get("bytes") if isinstance(value, dict) else value
            if not isinstance(data, str):
                raise ValueError(f"a {kind} entry carries a base64 BOC")
            cell = Cell.one_from_boc(base64.b64decode(data, validate=True))
            out.append(cell.begin_parse() if arguments and kind in ("slice", "tvm.Slice") else cell)
        elif kind in ("list", "tuple") and isinstance(value, dict) and value.get("elements") == []:
            out.append(None)  # the API shows null as an empty list
        else:
            raise ValueError(f"unsupported stack entry type {kind!r}")
    return out


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"not a number: {str(value)[:40]}")
    return value


class ToncenterTransport:
    """Blocking (urllib): the Ledger interface is called from threads."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout_s: float = 10.0, attempts: int = 4,
                 backoff_s: float = 0.25, poll_s: float = 0.25, settle_s: float = 10.0,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.url = url.rstrip("/")
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._poll_s = poll_s
        self._settle_s = settle_s
        self._clock = clock
        self._sleep = sleep
        self.calls = 0  # requests made (for measuring API use)
        self.chain_now = 0  # the chain's time (unix) as its last account state showed it

    # ---- one request, retried ----
    def _once(self, method: str, query: dict[str, Any] | None, body: Any) -> Any:
        """One attempt: the `result`, or ChainApiError (refused=True when retrying would not help)."""
        url = f"{self.url}/{method}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._api_key:
            headers["X-API-Key"] = self._api_key
        self.calls += 1
        req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
        status = 200
        try:
            with urllib.request.urlopen(req, timeout=self._timeout_s) as resp:
                raw = resp.read(16 * 1024 * 1024)
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read(1024 * 1024)
        try:
            answer = json.loads(raw)
        except ValueError:
            raise ChainApiError(f"HTTP {status}, not JSON: {raw[:80]!r}", code=status) from None
        if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
            raise ChainApiError(f"HTTP {status}, not an API answer: {str(answer)[:80]}", code=status)
        if not answer["ok"]:
            code = answer.get("code") if isinstance(answer.get("code"), int) else status
            error = str(answer.get("error"))[:300]
            raise ChainApiError(f"refused ({code}): {error}", code=code, refused=400 <= status < 500 and status != 429)
        if "result" not in answer or status != 200:
            raise ChainApiError(f"HTTP {status}, an answer without a result", code=status)
        return answer["result"]

    def _call(self, method: str, *, query: dict[str, Any] | None = None, body: Any = None) -> Any:
        last = ""
        for attempt in range(self._attempts):
            if attempt:
                self._sleep(min(self._backoff_s * 2 ** (attempt - 1), 4.0))
            try:
                return self._once(method, query, body)
            except ChainApiError as exc:
                if exc.refused:
                    raise ChainApiError(f"chain API {self.url} {method}: {exc}", code=exc.code, refused=True) from None
                last = str(exc)
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, cut short
                last = f"unreachable ({_reason(exc)})"
        raise ChainApiError(f"chain API {self.url} {method}: {last}, after {self._attempts} attempts")

    # ---- Transport ----
    def run_get(self, address: str, method: str, stack: list[Any]) -> list[Any]:
        result = self._call("runGetMethod", body={"address": address, "method": method,
                                                  "stack": stack_args_to_json(stack)})
        try:
            exit_code = _int(result["exit_code"])
            values = stack_from_json(result["stack"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainApiError(f"chain API {self.url} runGetMethod {method}: a malformed answer ({exc})") from None
        if exit_code not in (0, 1):
            raise LedgerError(f"get-method {method} on {address} failed with exit code {exit_code}")
        return values

    def account(self, address: str) -> tuple[str, int]:
        """(state: active | uninitialized | frozen, balance in nanoTON)."""
        result = self._call("getAddressInformation", query={"address": address})
        try:
            if isinstance(result.get("sync_utime"), int):
                self.chain_now = max(self.chain_now, result["sync_utime"])
            return str(result["state"]), int(result["balance"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainApiError(f"chain API {self.url} getAddressInformation: a malformed answer ({exc})") from None

    def is_active(self, address: str) -> bool:
        return self.account(address)[0] == "active"

    def balance(self, address: str) -> int:
        return self.account(address)[1]

    def masterchain_seqno(self) -> int:
        result = self._call("getMasterchainInfo")
        try:
            return _int(result["last"]["seqno"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainApiError(f"chain API {self.url} getMasterchainInfo: a malformed answer ({exc})") from None

    def global_id(self) -> int:
        """The chain's global id, from its config (param 19): what a node checks against its own configuration."""
        result = self._call("getConfigParam", query={"config_id": 19})
        try:
            return Cell.one_from_boc(base64.b64decode(result["config"]["bytes"], validate=True)).begin_parse() \
                .load_int(32)
        except Exception as exc:  # pytoniq raises bare exceptions on malformed cells
            raise ChainApiError(f"chain API {self.url} getConfigParam 19: a malformed answer ({exc})") from None

    def send_boc(self, boc: bytes, *, dest: str, valid_until: int) -> Trace:
        message_hash = Cell.one_from_boc(boc).hash
        body = {"boc": base64.b64encode(boc).decode()}
        maybe_sent = False  # an attempt may have reached the chain: from then on, only its outcome tells
        last = ""
        for attempt in range(self._attempts):
            if attempt:
                self._sleep(min(self._backoff_s * 2 ** (attempt - 1), 4.0))
            try:
                self._once("sendBocReturnHash", None, body)
                maybe_sent = True
                break
            except ChainApiError as exc:
                if exc.refused or (exc.code is not None and 400 <= exc.code < 500 and exc.code != 429) \
                        or (exc.code == 500 and "not accepted" in str(exc)):
                    if not maybe_sent:
                        raise ChainApiError(f"chain API {self.url} sendBocReturnHash: {exc}", code=exc.code,
                                            refused=True) from None
                    break  # refused now, but an earlier attempt may have been accepted: look for it
                maybe_sent, last = True, str(exc)
            except (OSError, http.client.HTTPException) as exc:
                last = f"unreachable ({_reason(exc)})"
                # a refused connection carried nothing; any other failure may have come after the request left
                maybe_sent = maybe_sent or not _connection_refused(exc)
        else:
            if not maybe_sent:
                raise ChainApiError(f"chain API {self.url} sendBocReturnHash: {last}, after {self._attempts} "
                                    f"attempts; nothing was sent")
        deadline = max(valid_until, self._clock()) + self._settle_s
        return self._trace(raw_address(dest), message_hash, deadline)

    def _trace(self, wallet: str, message_hash: bytes, deadline: float) -> Trace:
        first = self._find(wallet, message_hash, deadline)
        seen: list[SeenTx] = []
        sent = -1
        # (account, inbound message hash, its transaction if already found, which of the wallet's messages led here)
        todo: deque[tuple[str, bytes, Any, int]] = deque([(wallet, message_hash, first, -1)])
        while todo:
            if len(seen) >= MAX_TRACE:
                raise LedgerError(f"the operation caused more than {MAX_TRACE} transactions: a message loop")
            address, h, found, branch = todo.popleft()
            item = found if found is not None else self._find(address, h, deadline)
            tx, outs = _parse_tx(address, item)
            seen.append(dataclasses.replace(tx, branch=branch))
            if sent < 0:
                sent = len(outs)
                todo.extend((dest, out_hash, None, i) for i, (dest, out_hash) in enumerate(outs))
            else:
                todo.extend((dest, out_hash, None, branch) for dest, out_hash in outs)
        return Trace(seen, sent)

    def _find(self, address: str, message_hash: bytes, deadline: float) -> dict[str, Any]:
        """The transaction of `address` whose inbound message hashes to `message_hash`, polled until `deadline`."""
        wanted = base64.b64encode(message_hash).decode()
        last = ""
        while True:
            try:
                items = self._call("getTransactions", query={"address": address, "limit": PAGE, "archival": "true"})
                if not isinstance(items, list):
                    raise ChainApiError("getTransactions: not a list")
                for item in items:
                    in_msg = item.get("in_msg") if isinstance(item, dict) else None
                    if isinstance(in_msg, dict) and in_msg.get("hash") == wanted:
                        return item
                last = ""
            except ChainApiError as exc:
                last = f"; the chain API last answered: {exc}"
            if self._clock() >= deadline:
                raise OutcomeUnknown(f"message {message_hash.hex()} to {address} was not seen on chain by "
                                     f"{int(deadline)} (unix time){last}; it cannot execute after its valid_until: "
                                     f"read the account's transactions before sending the operation again")
            self._sleep(self._poll_s)

    def close(self) -> None:
        pass


def _parse_tx(address: str, item: dict[str, Any]) -> tuple[SeenTx, list[tuple[str, bytes]]]:
    """A transaction as the API shows it: what it cost and the internal messages it sent (destination, hash)."""
    try:
        lt = int(item["transaction_id"]["lt"])
        data = item.get("data") or ""
        if not data:  # a delivery that ran no code (the devnet's faucet): its fees are in the JSON
            in_msg = item["in_msg"]
            fees = int(item["fee"]) + int(in_msg.get("fwd_fee", 0)) + int(in_msg.get("ihr_fee", 0))
            return SeenTx(address, lt, None, False, fees), []
        cell = Cell.one_from_boc(base64.b64decode(data, validate=True))
        tx = Transaction.deserialize(cell.begin_parse())
        inbound, outs = transaction_messages(cell)
    except (KeyError, TypeError, ValueError) as exc:
        raise ChainApiError(f"a transaction of {address} the chain API showed is malformed ({exc})") from None
    except Exception as exc:  # pytoniq raises bare exceptions on malformed cells
        raise ChainApiError(f"a transaction of {address} the chain API showed does not parse ({exc})") from None
    fees = tx.total_fees.grams
    if inbound is not None:
        info = MessageAny.deserialize(inbound.begin_parse()).info
        if isinstance(info, InternalMsgInfo):
            fees += info.fwd_fee + info.ihr_fee
    compute = tx.description.compute_ph
    exit_code = compute.exit_code if compute is not None and compute.type_ == "vm" else None
    sent = []
    for out in outs:
        info = MessageAny.deserialize(out.begin_parse()).info
        if isinstance(info, InternalMsgInfo):
            sent.append((raw_address(info.dest), out.hash))
    return SeenTx(address, lt, exit_code, bool(tx.description.aborted), fees), sent


def _connection_refused(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionRefusedError) or isinstance(getattr(exc, "reason", None), ConnectionRefusedError)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason if reason is not None else exc}"[:200]
