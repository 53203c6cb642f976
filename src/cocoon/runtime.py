"""What every role process shares: structured logs, its attested identity, and a clean stop on signals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable

from cocoon.attest.backends import get_backend
from cocoon.attest.policy import load_policy
from cocoon.config import CommonConfig
from cocoon.ratls.cert import CertVerifier, Identity, make_identity

log = logging.getLogger("cocoon")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; messages never carry prompts, answers or keys (callers log ids and sizes)."""

    def __init__(self, role: str, name: str) -> None:
        super().__init__()
        self.role = role
        self.name = name

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "role": self.role,
            "node": self.name,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(role: str, cfg: CommonConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(role, cfg.name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.log_level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def make_node_identity(role: str, cfg: CommonConfig, accept_roles: set[str]) -> tuple[Identity, CertVerifier]:
    """A fresh attested certificate for this process, and the verifier for the peers it accepts."""
    policy = load_policy(cfg.policy)
    if not policy.production_safe:
        log.warning("policy %r is NOT safe for production: it accepts fake attestation", policy.name,
                    extra={"fields": {"policy": policy.name}})
    backend = get_backend(cfg.attestation, image=cfg.image)
    identity = make_identity(role, backend, lifetime_s=cfg.cert_lifetime_s, now=time.time())
    return identity, CertVerifier(policy, accept_roles)


def own_image_hash(cfg: CommonConfig) -> str | None:
    """This node's image hash as its peers will see it (hex), or None for attestation kind `none`."""
    backend = get_backend(cfg.attestation, image=cfg.image)
    verified = backend.verify(backend.quote(bytes(64)), time.time())
    return verified.image_hash.hex() if verified.image_hash else None


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop)` until it returns; SIGINT/SIGTERM set `stop` so it can shut down cleanly."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runner())
