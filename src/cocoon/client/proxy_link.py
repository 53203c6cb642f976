"""The client's link to its proxy: attested, kept up with backoff, shared by all API requests."""

from __future__ import annotations

import logging

from cocoon.core.errors import ApiError, ErrorCode
from cocoon.wire.connection import Call, Connection, LinkLost
from cocoon.wire.dialer import Dialer
from cocoon.wire.messages import Inbound, ModelsReply, Request

log = logging.getLogger(__name__)


def refuse_inbound(conn: Connection, msg: Inbound) -> None:
    """Proxies only answer clients; anything else they send is dropped."""
    log.warning("ignoring %s sent by the proxy", type(msg).__name__)


class ProxyLink:
    def __init__(self, dialer: Dialer, connect_timeout_s: float) -> None:
        self.dialer = dialer
        self.connect_timeout_s = connect_timeout_s

    async def _connection(self) -> Connection:
        conn = await self.dialer.wait_connected(self.connect_timeout_s)
        if conn is None:
            timed_out = self.dialer.last_dial_timed_out
            raise ApiError(503, f"no link to a proxy within {self.connect_timeout_s:.1f}s: {self.dialer.last_error}",
                           type="service_unavailable", retry_after=2,
                           code=ErrorCode.PROXY_CONNECT_TIMEOUT if timed_out else ErrorCode.PROXY_UNAVAILABLE)
        return conn

    async def call(self, req: Request) -> Call:
        return (await self.request(req))[0]

    async def request(self, req: Request) -> tuple[Call, bytes]:
        """The call sending `req`, and the voucher key of the attested proxy it went to (which countersigns the
        answer's receipt)."""
        conn, call = await self.open(req)
        return call, conn.peer.voucher_key

    async def open(self, req: Request) -> tuple[Connection, Call]:
        """Send `req`; the link it went on (where the parts of its body go, and its attested proxy), and the call."""
        conn = await self._connection()
        try:
            return conn, await conn.request(req)
        except ConnectionError as exc:
            raise ApiError(503, f"proxy link failed: {exc}", type="service_unavailable",
                           code=ErrorCode.PROXY_UNAVAILABLE, retry_after=2) from None

    async def models(self, seal_for: str = "") -> ModelsReply:
        """The models the proxy serves; with `seal_for`, also the certificates of workers serving that model."""
        conn = await self._connection()
        try:
            reply = await conn.query_models(seal_for=seal_for)
        except (TimeoutError, ConnectionError, LinkLost) as exc:
            raise ApiError(503, f"proxy did not list its models: {exc!r}", type="service_unavailable",
                           code=ErrorCode.PROXY_UNAVAILABLE, retry_after=2) from None
        if not isinstance(reply, ModelsReply):
            raise ApiError(502, "proxy answered the model list with an error", code=ErrorCode.UPSTREAM_ERROR)
        return reply
