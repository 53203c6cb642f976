"""The client's link to its proxy: attested, kept up with backoff, shared by all API requests."""

from __future__ import annotations

import logging

from cocoon.errors import ApiError
from cocoon.wire.connection import Call, Connection
from cocoon.wire.dialer import Dialer
from cocoon.wire.messages import Cancel, ModelsQuery, ModelsReply, Request

log = logging.getLogger(__name__)


def refuse_inbound(conn: Connection, msg: Request | Cancel | ModelsQuery) -> None:
    """Proxies only answer clients; anything else they send is dropped."""
    log.warning("ignoring %s sent by the proxy", type(msg).__name__)


class ProxyLink:
    def __init__(self, dialer: Dialer) -> None:
        self.dialer = dialer

    async def _connection(self, wait_s: float) -> Connection:
        conn = await self.dialer.wait_connected(wait_s)
        if conn is None:
            raise ApiError(503, f"no connection to the proxy at {self.dialer.address}: {self.dialer.last_error}",
                           type="service_unavailable", code="proxy_unavailable", retry_after=2)
        return conn

    async def call(self, req: Request, wait_s: float = 5.0) -> Call:
        conn = await self._connection(wait_s)
        try:
            return await conn.request(req)
        except ConnectionError as exc:
            raise ApiError(503, f"proxy link failed: {exc}", type="service_unavailable",
                           code="proxy_unavailable", retry_after=2) from None

    async def models(self) -> ModelsReply:
        conn = await self._connection(5.0)
        try:
            reply = await conn.query_models()
        except (TimeoutError, ConnectionError) as exc:
            raise ApiError(503, f"proxy did not list its models: {exc!r}", type="service_unavailable",
                           code="proxy_unavailable", retry_after=2) from None
        if not isinstance(reply, ModelsReply):
            raise ApiError(502, "proxy answered the model list with an error", code="upstream_error")
        return reply
