"""Issue 15 item 13 (per-client limits), attack: minting RA-TLS keys to multiply one's limits.

The proxy's per-client limits (requests in flight, tokens per minute) were kept per RA-TLS key, which a client
mints for free: a client over its limits opened another link under a fresh key, paying through the same channel,
and was served again. Now the limits count per paying wallet: two links under different keys presenting the same
channel share one limit, and so does a link paying through a second channel of the same wallet.

Through a real `cocoon up` proxy and worker on the local chain (payments on); the attacker dials the proxy itself
with keys it generates, each proving (with its wallet's signature) that it pays through the wallet's channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cocoon.attest.none import NoneBackend
from cocoon.attest.policy import DEV_POLICY
from cocoon.ledger.base import TON
from cocoon.ledger.purse import ChannelPolicy, ClientPurse
from cocoon.ledger.vouchers import VoucherBook
from cocoon.ledger.wallet import Wallet
from cocoon.localnet import LocalNet, free_port
from cocoon.nodekeys import operator_keys
from cocoon.ratls import tls
from cocoon.ratls.cert import CertVerifier, make_identity
from cocoon.wire.connection import Connection, dial_hello, hello
from cocoon.wire.messages import Answer, ClientParams, Request, ResponseEnd, ResponseError, ResponseHead
from tests.netutil import BLOCK_S, chain_ledger, get_json

TOKENS_PER_MINUTE = 30  # one answer (a few prompt tokens and 40 completion tokens) overdraws it
BODY = b'{"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}'


@contextlib.asynccontextmanager
async def paying_link(port: int, purse: ClientPurse, wallet: Wallet) -> AsyncIterator[Connection]:
    """A link under a freshly minted RA-TLS key whose hello says it pays through `purse`'s channel."""
    key = Ed25519PrivateKey.generate()
    tls_key = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    stream = await tls.connect("127.0.0.1", port, make_identity("client", NoneBackend(), private_key=key),
                               CertVerifier(DEV_POLICY, {"proxy"}), timeout=10)
    params = ClientParams(owner=wallet.address, channel=purse.channel, nonce=purse.nonce,
                          wallet_key=wallet.public_key, proof=purse.proof(tls_key))
    conn = await dial_hello(stream, hello("client", f"key-{tls_key.hex()[:8]}", client=params), timeout=10)
    runner = asyncio.create_task(conn.run(lambda c, m: None))
    try:
        yield conn
    finally:
        await conn.close("done")
        await runner


def chat(stream: bool) -> Request:
    return Request(endpoint="chat", model="fake-model", body=BODY, stream=stream, include_usage=False,
                   deadline=time.time() + 60, request_id=uuid.uuid4().hex)


async def whole(conn: Connection) -> Answer:
    """One non-streamed request's last answer."""
    call = await conn.request(chat(stream=False))
    while True:
        msg = await call.next(30)
        if isinstance(msg, ResponseEnd | ResponseError):
            return msg


def limited(answer: Answer) -> str | None:
    assert isinstance(answer, ResponseError | ResponseEnd), answer
    return answer.code if isinstance(answer, ResponseError) and answer.status == 429 else None


async def attack(port: int, first: ClientPurse, second: ClientPurse, wallet: Wallet) -> None:
    async with paying_link(port, first, wallet) as a, paying_link(port, first, wallet) as b, \
            paying_link(port, second, wallet) as c:
        # one request in flight on link a: the concurrency limit (1) is reached for the whole wallet
        slow = await a.request(chat(stream=True))
        assert isinstance(await slow.next(30), ResponseHead)
        assert limited(await whole(b)) == "concurrency_limit_exceeded"
        assert limited(await whole(c)) == "concurrency_limit_exceeded"
        while not isinstance(await slow.next(30), ResponseEnd | ResponseError):
            pass
        # that answer overdrew the wallet's tokens for this minute, under every key and channel
        assert limited(await whole(b)) == "tokens_per_minute_exceeded"
        assert limited(await whole(c)) == "tokens_per_minute_exceeded"


async def test_new_tls_keys_and_channels_of_one_wallet_share_its_limits(tmp_path: Path) -> None:
    net = LocalNet(tmp_path / "state", workers=1, engine="fake", port=free_port(), max_active=4,
                   engine_options={"reply_tokens": 40, "tokens_per_s": 40},
                   proxy_options={"client_max_concurrent": 1, "client_tokens_per_minute": TOKENS_PER_MINUTE},
                   block_interval_s=BLOCK_S)
    try:
        await asyncio.to_thread(net.start, 60)
        state = net.state_dir
        wallet = operator_keys(state, "client-1").wallet()  # client-1 opened its channel #0 with the proxy
        with contextlib.closing(chain_ledger(net.chain_info)) as ledger, \
                contextlib.closing(VoucherBook(tmp_path / "attacker.vouchers.sqlite")) as vouchers:
            (proxy,) = ledger.proxies()
            first = ClientPurse(ledger, wallet, proxy.address, vouchers, nonce=0)
            policy = ChannelPolicy(deposit=10 * TON, stake=5 * TON, top_up_below=2 * TON, top_up_to=10 * TON)
            second = ClientPurse(ledger, wallet, proxy.address, vouchers, policy, nonce=1)
            second.ensure_open()
            await attack(net.proxy_port, first, second, wallet)
        stats = get_json(next(n for n in net.nodes if n.role == "proxy").stats_url + "/jsonstats")
        assert stats["limits"]["keyed_by"] == "wallet"
        assert stats["requests"].get("tokens_per_minute_exceeded") == 2
    finally:
        await asyncio.to_thread(net.stop)
