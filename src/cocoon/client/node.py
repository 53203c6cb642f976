"""The client process: an attested link to its proxy and the local OpenAI-compatible API."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from cocoon.attest.registry import registered_proxy_check
from cocoon.attest.types import AttestationError, PeerIdentity
from cocoon.client.api import ClientApi
from cocoon.client.oblivious import RelayLink
from cocoon.client.payments import ClientPayments
from cocoon.client.proxy_link import ProxyLink, refuse_inbound
from cocoon.client.sealing import RequestSealer
from cocoon.config import ClientConfig, ConfigError, is_loopback
from cocoon.discovery import proxy_directory
from cocoon.ledger.base import LedgerError
from cocoon.observe.stats import StatsServer
from cocoon.ratls.cert import CertVerifier
from cocoon.runtime import identity_stats, make_node_identity, registry_head_path, serve_until
from cocoon.wire.connection import hello
from cocoon.wire.dialer import Dialer
from cocoon.wire.messages import ClientParams, Hello

log = logging.getLogger(__name__)


def request_sealer(cfg: ClientConfig, verifier: CertVerifier, link: ProxyLink | RelayLink) -> RequestSealer | None:
    """What seals each request to workers this client verifies itself, under the policy it verifies proxies with
    (`verifier`'s, for role `worker`); None (bodies in the clear to the proxy) only when configured so, said
    loudly."""
    if not cfg.seal_requests:
        log.warning("seal_requests is off: request bodies and answers travel in the clear to the proxy, which can "
                    "read them; use this for debugging only", extra={"fields": {"seal_requests": False}})
        return None
    workers = CertVerifier(verifier.policy, {"worker"}, registry=verifier.registry, collateral=verifier.collateral)
    return RequestSealer(link, workers, cfg.seal_candidates)


class ProxyUpstream:
    """A client of record's way to its proxies: its attested identity, a payment channel per proxy, and the link
    kept up along `proxies`. The client API and the relay (`cocoon relay`, which pays for its users) build on it."""

    def __init__(self, cfg: ClientConfig) -> None:
        self.cfg = cfg
        self.identity, self.verifier = make_node_identity("client", cfg, {"proxy"})
        self.payments = ClientPayments(cfg, self.identity.current().public_key) if cfg.payments else None
        # paying through a proxy's contract: only the proxy registered at the address dialed may take the link
        self._registered = registered_proxy_check(self.payments.ledger, registry_head_path(cfg)) \
            if self.payments else None
        # the proxies to dial: pinned in the config, or found in the root registry (nearest first)
        self.directory = proxy_directory(cfg, self.payments.ledger if self.payments else None)
        self.dialer = Dialer(self.directory.addresses, self.identity, self.verifier, self._hello,
                             refuse_inbound, connect_timeout_s=cfg.connect_timeout_s,
                             check_peer=self._check_proxy if self.payments else None)
        self.link = ProxyLink(self.dialer, cfg.connect_timeout_s)
        self._topping_up: asyncio.Task[None] | None = None

    def _check_proxy(self, address: str, peer: PeerIdentity) -> None:
        """Only the proxy registered at the address dialed may take the link, and it has a funded channel before
        the hello names it (blocking: runs in the dialer's thread)."""
        assert self._registered is not None and self.payments is not None
        self._registered(address, peer)
        try:
            self.payments.ensure_channel(address)
        except LedgerError as exc:
            raise AttestationError(f"no payment channel with the proxy at {address}: {exc}") from None

    def link_changed(self, up: bool) -> None:
        if not up:
            self.directory.on_link_lost()

    def _hello(self) -> Hello:
        # called as each dial starts: `dialer.address` is the proxy being dialed, each has its own channel
        params = self.payments.client_params(self.dialer.address) if self.payments else ClientParams()
        return hello("client", self.cfg.name, client=params)

    async def start(self) -> None:
        await self.directory.refresh(probe=True)
        if self.payments is not None:
            # the proxies see a funded channel from the first hello
            await asyncio.to_thread(self.payments.open, self.directory.addresses())
            self._topping_up = asyncio.create_task(self.payments.run())
        self.directory.start()
        self.dialer.start()

    async def stop(self) -> None:
        await self.dialer.stop("client shutting down")
        await self.directory.stop()
        if self._topping_up is not None:
            self._topping_up.cancel()
        if self.payments is not None:
            self.payments.close()

    def jsonstats(self) -> dict[str, Any]:
        return {
            "proxy": self.dialer.address,
            "proxies": self.directory.addresses(),
            "proxy_latency_ms": self.directory.latency_ms(),
            "proxy_connected": self.dialer.connected,
            "last_link_error": self.dialer.last_error,
            "identity": identity_stats(self.identity),
            **({"wallet": self.payments.wallet.address,
                "balance_nanoton": self.payments.balance_nanoton, "vouchers_nanoton": self.payments.charged_nanoton,
                "refused_vouchers": self.payments.refused_vouchers,
                "superseded_vouchers": self.payments.superseded_vouchers,
                "unexplained_nanoton": self.payments.unexplained_nanoton,
                "unseen_answers": self.payments.audit.unseen_answers,
                "overcharges": self.payments.overcharges,
                "overpriced_nanoton": self.payments.overpriced_nanoton,
                "unbacked_answers": self.payments.unbacked_answers,
                "unbacked_nanoton": self.payments.unbacked_nanoton,
                "channels": {a: p.channel for a, p in self.payments.purses.items()}} if self.payments else {}),
        }


class ClientNode:
    def __init__(self, cfg: ClientConfig) -> None:
        if not is_loopback(cfg.api_host) and not cfg.api_key:
            raise ConfigError(f"the API would listen on {cfg.api_host}, reachable from other machines: "
                              "set `api_key` in the client config (requests then need `Authorization: Bearer`)")
        self.cfg = cfg
        self.upstream: ProxyUpstream | None = None
        self.relay: RelayLink | None = None
        if cfg.via_relay:
            # through a relay (Oblivious HTTP): the relay pays, this client only verifies and encapsulates
            if cfg.payments:
                raise ConfigError("`via_relay` and `payments` exclude each other: the relay is the paying client")
            self.identity, verifier = make_node_identity("client", cfg, {"proxy"})
            self.relay = RelayLink(cfg.via_relay, verifier, timeout_s=cfg.request_timeout_s,
                                   subscriber_token=cfg.subscriber_token)
            self.api = ClientApi(cfg, self.relay, sealer=request_sealer(cfg, verifier, self.relay))
        else:
            self.upstream = ProxyUpstream(cfg)
            self.identity = self.upstream.identity
            self.api = ClientApi(cfg, self.upstream.link, payments=self.upstream.payments,
                                 sealer=request_sealer(cfg, self.upstream.verifier, self.upstream.link))
        registry = CollectorRegistry()
        connected = Gauge("cocoon_client_proxy_connected", "1 while the proxy link is up", registry=registry)
        Gauge("cocoon_client_active_requests", "API requests in flight", registry=registry).set_function(
            lambda: self.api.stats.active)
        if self.upstream is not None:
            upstream = self.upstream

            def link_changed(up: bool) -> None:
                connected.set(1 if up else 0)
                upstream.link_changed(up)

            upstream.dialer.on_change = link_changed
        self.stats = StatsServer("client", cfg.name, registry, self.jsonstats, token=cfg.stats_token)
        self._runner: web.AppRunner | None = None
        self.api_port = 0

    @property
    def payments(self) -> ClientPayments | None:
        return self.upstream.payments if self.upstream is not None else None

    @property
    def dialer(self) -> Dialer:
        assert self.upstream is not None, "a client through a relay has no proxy link"
        return self.upstream.dialer

    async def start(self) -> None:
        await self.stats.start(self.cfg.stats_host, self.cfg.stats_port)
        if self.upstream is not None:
            await self.upstream.start()
        # handler_cancellation: a client that hangs up cancels its handler, which cancels the generation.
        self._runner = web.AppRunner(self.api.build_app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.api_host, self.cfg.api_port)
        await site.start()
        self.api_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("client API listening", extra={"fields": {"api": f"http://{self.cfg.api_host}:{self.api_port}/v1",
                                                           "stats_port": self.stats.port,
                                                           "via_relay": self.cfg.via_relay or None}})

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
        if self.upstream is not None:
            await self.upstream.stop()
        if self.relay is not None:
            await self.relay.close()
        await self.stats.stop()

    def jsonstats(self) -> dict[str, Any]:
        s = self.api.stats
        return {
            "api_url": f"http://{self.cfg.api_host}:{self.api_port}/v1",
            "active_requests": s.active,
            "requests": dict(s.outcomes),
            "tokens": dict(s.usage),
            "media_seconds": s.media_ms / 1000,  # input media processed by the media workload
            # what the proxies charged for completed requests (by their answers' costs), settled on chain or not
            "charged_nanoton": s.charged_nanoton,
            "receipts": dict(s.receipts),  # answers' receipts: held (checked), missing, refused
            "series": s.series.snapshot(),
            "latency_ms": s.series.recent("latency_ms"),
            "ttft_ms": s.series.recent("ttft_ms"),
            "models": s.per_model(),
            "recent_errors": list(s.recent_errors),
            **(self.upstream.jsonstats() if self.upstream is not None else
               {"via_relay": self.cfg.via_relay, "identity": identity_stats(self.identity)}),
        }


async def run_client(cfg: ClientConfig, stop: asyncio.Event) -> None:
    await serve_until(ClientNode(cfg), stop)
