"""`cocoon.sdk`: cocoon inside an app, without a local process, shaped like the OpenAI SDK.

    from cocoon.sdk import Client
    client = Client(relay="http://127.0.0.1:10300")          # through an Oblivious HTTP relay (it pays), or
    client = Client(proxy="127.0.0.1:10100", payments=True)  # straight to a proxy, paying from your own channel
    answer = client.chat.completions.create(model="...", messages=[{"role": "user", "content": "Hi"}])
    answer.choices[0].message.content, answer.usage.cost_nanoton

`AsyncClient` is the same with `await`; `stream=True` gives the chunks as they come (`for chunk in ...` /
`async for`), and the stream's `usage` (with `cost_nanoton`) once it ended. Requests are checked and built exactly
as the client API builds them (`openai/schema.py`, `client/api.py` `wire_request`). The SDK verifies the proxy's
attestation itself against `policy`: on its RA-TLS link, or, through a relay, on the gateway's signed keys before
anything is encapsulated (`client/oblivious.py`). Errors are `ApiError` (status, code, message), as the API
answers them. Answers are `Obj`: dicts whose keys also read as attributes. Each answer's receipt is checked as the
client API checks it (`client/receipts.py`) and shown in its `usage.receipt` (a stream's: in its final usage chunk);
with payments on, only a charge a checked receipt backs is accepted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from cocoon.client.api import wire_request, with_cost
from cocoon.client.node import ProxyUpstream, request_sealer
from cocoon.client.oblivious import RelayLink
from cocoon.client.receipts import AnswerSeen, check_receipt
from cocoon.config import ClientConfig
from cocoon.core.errors import DECODE_ERRORS, ApiError, ErrorCode
from cocoon.core.ids import new_request_id
from cocoon.ledger.receipts import Receipt, ReceiptError
from cocoon.openai import schema
from cocoon.runtime import make_node_identity
from cocoon.seal import SealError
from cocoon.wire.messages import Request, ResponseChunk, ResponseEnd, ResponseError, ResponseHead

__all__ = ["ApiError", "AsyncClient", "Client", "Obj"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Obj(dict[str, Any]):
    """An answer as the OpenAI SDK shows it: `answer.choices[0].message.content` (and `answer["choices"]`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return _wrap(self[name])
        except KeyError:
            raise AttributeError(name) from None


def _wrap(value: Any) -> Any:
    if isinstance(value, dict):
        return Obj(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _decode(payload: bytes) -> Obj:
    try:
        return Obj(msgspec.json.decode(payload))
    except (*DECODE_ERRORS, TypeError, ValueError):
        raise ApiError(502, "the worker's answer is not JSON", code=ErrorCode.ENGINE_BAD_RESPONSE) from None


class AsyncStream:
    """A streamed answer's chunks (`async for`); `usage` (with `cost_nanoton`) once it ended."""

    def __init__(self, chunks: AsyncIterator[Obj], done: Callable[[], Obj | None]) -> None:
        self._chunks = chunks
        self._done = done

    def __aiter__(self) -> AsyncIterator[Obj]:
        return self._chunks

    @property
    def usage(self) -> Obj | None:
        return self._done()


class Stream:
    """The same for `Client`: `for chunk in stream`."""

    def __init__(self, inner: AsyncStream, run: Callable[[Awaitable[T]], T]) -> None:
        self._inner = inner
        self._run = run

    def __iter__(self) -> Iterator[Obj]:
        chunks = aiter(self._inner)
        while True:
            try:
                yield self._run(anext(chunks))
            except StopAsyncIteration:
                return

    @property
    def usage(self) -> Obj | None:
        return self._inner.usage


class _Core:
    """One transport (a relay, or a proxy link with its payments) and the requests sent on it."""

    def __init__(self, cfg: ClientConfig) -> None:
        self.cfg = cfg
        self.upstream: ProxyUpstream | None = None
        self.relay: RelayLink | None = None
        if cfg.via_relay:
            _, verifier = make_node_identity("client", cfg, {"proxy"})
            self.relay = RelayLink(cfg.via_relay, verifier, timeout_s=cfg.request_timeout_s,
                                   subscriber_token=cfg.subscriber_token)
            self.sealer = request_sealer(cfg, verifier, self.relay)
        else:
            self.upstream = ProxyUpstream(cfg)
            self.sealer = request_sealer(cfg, self.upstream.verifier, self.upstream.link)
        self._started = False

    async def start(self) -> None:
        if not self._started and self.upstream is not None:
            await self.upstream.start()
        self._started = True

    async def close(self) -> None:
        if self.upstream is not None and self._started:
            await self.upstream.stop()
        if self.relay is not None:
            await self.relay.close()

    async def models(self) -> Obj:
        await self.start()
        link = self.relay if self.relay is not None else self.upstream.link  # type: ignore[union-attr]
        reply = await link.models()
        return Obj({"object": "list", "data": [{"id": m.id, "object": "model", "owned_by": "cocoon"}
                                               for m in reply.models]})

    async def answers(self, req: Request) -> AsyncIterator[ResponseHead | ResponseChunk | ResponseEnd]:
        """The proxy's answers to `req` up to its end; its error raised as ApiError; its charge to the payments.
        The end's receipt is the one checked against what was sent and received (client/receipts.py), or None:
        only a checked receipt backs the charge."""
        await self.start()
        payments = self.upstream.payments if self.upstream is not None else None
        ticket = payments.begin(req.request_id) if payments is not None else 0
        try:
            try:
                if self.sealer is not None:  # sealed to the workers it verified
                    call, proxy_key = await self.sealer.request(req)
                else:
                    call, proxy_key = await (self.relay.request(req) if self.relay is not None
                                             else self.upstream.link.request(req))  # type: ignore[union-attr]
            except ApiError:
                if payments is not None:
                    payments.unsent(ticket)
                raise
            answer = AnswerSeen(getattr(call, "deterministic", False))
            try:
                while True:
                    msg = await call.next(self.cfg.request_timeout_s)
                    if isinstance(msg, ResponseChunk):
                        answer.update(msg.data, has_usage=msg.has_usage)
                    elif isinstance(msg, ResponseEnd):
                        msg = msgspec.structs.replace(msg, receipt=_checked(msg, req, answer, proxy_key,
                                                                            getattr(call, "worker_key", b"")))
                    if isinstance(msg, ResponseEnd | ResponseError) and payments is not None:
                        payments.end(ticket, msg, msg.receipt if isinstance(msg, ResponseEnd) else None, checked=True)
                    if isinstance(msg, ResponseError):
                        raise msg.to_api()
                    if isinstance(msg, ResponseHead | ResponseChunk | ResponseEnd):
                        yield msg
                    if isinstance(msg, ResponseEnd):
                        return
            except SealError:  # an answer changed on the way: never accepted as charged
                if payments is not None:
                    payments.disown(ticket)
                raise
            finally:
                if not call.done:
                    call.cancel("the SDK's caller stopped reading")
        finally:
            if payments is not None:
                payments.end(ticket, None)  # a no-op once its end was seen

    def request(self, endpoint: str, body: dict[str, Any]) -> Request:
        raw = msgspec.json.encode(body)
        limits = {"max_tokens_limit": self.cfg.max_tokens_limit, "max_prompt_chars": self.cfg.max_prompt_chars}
        parsed = (schema.parse_chat_request(raw, **limits) if endpoint == "chat"
                  else schema.parse_completion_request(raw, **limits))
        return wire_request(endpoint, parsed, self.cfg, new_request_id())

    async def whole(self, req: Request) -> Obj:
        parts: list[bytes] = []
        async for msg in self.answers(req):
            if isinstance(msg, ResponseChunk):
                parts.append(msg.data)
            elif isinstance(msg, ResponseEnd):
                return _decode(with_cost(b"".join(parts), msg.cost_nanoton, msg.receipt))
        raise ApiError(502, "the answer ended without its end", code=ErrorCode.UPSTREAM_ERROR)

    def stream(self, req: Request) -> AsyncStream:
        ended: list[Obj] = []

        async def chunks() -> AsyncIterator[Obj]:
            held: bytes | None = None  # the usage chunk, sent once the end says what the answer cost
            async for msg in self.answers(req):
                if isinstance(msg, ResponseChunk):
                    if msg.has_usage:
                        held = msg.data
                    else:
                        yield _decode(msg.data)
                elif isinstance(msg, ResponseEnd):
                    ended.append(Obj({**msgspec.to_builtins(msg.usage.to_openai()), "cost_nanoton": msg.cost_nanoton}))
                    if held is not None:
                        yield _decode(with_cost(held, msg.cost_nanoton, msg.receipt))

        return AsyncStream(chunks(), lambda: ended[0] if ended else None)


def _checked(end: ResponseEnd, req: Request, seen: AnswerSeen, proxy_key: bytes, worker_key: bytes
             ) -> Receipt | None:
    """The end's receipt if it holds (client/receipts.py); `worker_key`: a sealed request's, the worker that opened
    it."""
    try:
        return check_receipt(end, req=req, answer_hash=seen.answer_hash(), proxy_key=proxy_key, worker_key=worker_key,
                             content_digest=seen.content_digest())
    except ReceiptError as exc:
        log.warning("answer without a valid receipt", extra={"fields": {"request_id": req.request_id,
                                                                        "reason": str(exc)}})
        return None


def _config(relay: str | None, proxy: str | None, *, state_dir: str | Path, policy: str, payments: bool,
            name: str, subscriber_token: str | None, timeout_s: float,
            max_coefficient: int | None, chain: dict[str, str] | None = None) -> ClientConfig:
    if (relay is None) == (proxy is None):
        raise ValueError("give either `relay` (an Oblivious HTTP relay's URL) or `proxy` (host:port)")
    if relay is not None and payments:
        raise ValueError("through a relay the relay pays: `payments` is for a direct proxy link")
    extra: dict[str, Any] = {"default_max_coefficient": max_coefficient} if max_coefficient is not None else {}
    extra.update(chain or {})  # network, ton_api, ton_api_key, root: the chain the payments are on
    return ClientConfig(name=name, state_dir=str(Path(state_dir).expanduser()), policy=policy, payments=payments,
                        proxy=proxy or "127.0.0.1:10100", via_relay=relay or "", subscriber_token=subscriber_token,
                        request_timeout_s=timeout_s, **extra)


class _AsyncCompletions:
    def __init__(self, core: _Core, endpoint: str) -> None:
        self._core = core
        self._endpoint = endpoint

    async def create(self, **body: Any) -> Obj | AsyncStream:
        req = self._core.request(self._endpoint, body)
        return self._core.stream(req) if req.stream else await self._core.whole(req)


class _AsyncChat:
    def __init__(self, core: _Core) -> None:
        self.completions = _AsyncCompletions(core, "chat")


class _AsyncModels:
    def __init__(self, core: _Core) -> None:
        self._core = core

    async def list(self) -> Obj:
        return await self._core.models()


class AsyncClient:
    """cocoon for asyncio apps: `await client.chat.completions.create(...)`."""

    def __init__(self, relay: str | None = None, proxy: str | None = None, *, state_dir: str | Path = "~/.cocoon-sdk",
                 policy: str = "dev", payments: bool = False, name: str = "sdk", subscriber_token: str | None = None,
                 timeout_s: float = 600.0, max_coefficient: int | None = None,
                 chain: dict[str, str] | None = None) -> None:
        """`chain`: with `payments`, the chain they are on (`network`, `ton_api`, `ton_api_key`, `root`: the
        config fields of ledger/network.py)."""
        self._core = _Core(_config(relay, proxy, state_dir=state_dir, policy=policy, payments=payments, name=name,
                                   subscriber_token=subscriber_token, timeout_s=timeout_s,
                                   max_coefficient=max_coefficient, chain=chain))
        self.chat = _AsyncChat(self._core)
        self.completions = _AsyncCompletions(self._core, "completions")
        self.models = _AsyncModels(self._core)

    async def close(self) -> None:
        await self._core.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _Portal:
    """An event loop in a thread of its own, where a sync `Client` runs its async core."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="cocoon-sdk", daemon=True)
        self._thread.start()

    def run(self, aw: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await aw

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class _Completions:
    def __init__(self, inner: _AsyncCompletions, portal: _Portal) -> None:
        self._inner = inner
        self._portal = portal

    def create(self, **body: Any) -> Obj | Stream:
        answer = self._portal.run(self._inner.create(**body))
        return Stream(answer, self._portal.run) if isinstance(answer, AsyncStream) else answer


class _Chat:
    def __init__(self, inner: _AsyncChat, portal: _Portal) -> None:
        self.completions = _Completions(inner.completions, portal)


class _Models:
    def __init__(self, inner: _AsyncModels, portal: _Portal) -> None:
        self._inner = inner
        self._portal = portal

    def list(self) -> Obj:
        return self._portal.run(self._inner.list())


class Client:
    """cocoon for ordinary (blocking) code: `client.chat.completions.create(...)`. Same arguments as
    `AsyncClient`; its requests run on an event loop in a thread of its own."""

    def __init__(self, relay: str | None = None, proxy: str | None = None, **options: Any) -> None:
        self._portal = _Portal()
        try:
            self._async = self._portal.run(_make_async(relay, proxy, options))
        except BaseException:
            self._portal.close()
            raise
        self.chat = _Chat(self._async.chat, self._portal)
        self.completions = _Completions(self._async.completions, self._portal)
        self.models = _Models(self._async.models, self._portal)

    def close(self) -> None:
        try:
            self._portal.run(self._async.close())
        finally:
            self._portal.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _make_async(relay: str | None, proxy: str | None, options: dict[str, Any]) -> AsyncClient:
    return AsyncClient(relay, proxy, **options)  # made on the portal's loop, where it will run
