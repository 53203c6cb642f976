"""What every role process shares: structured logs, its attested identity, and a clean stop on signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import msgspec
import uvloop
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cocoon.attest.backends import get_backend
from cocoon.attest.collateral import CollateralCache
from cocoon.attest.inspect import read_quote
from cocoon.attest.policy import load_policy
from cocoon.attest.registry import RegistryImages
from cocoon.attest.trustconfig import trust_config
from cocoon.config import CommonConfig
from cocoon.core.ids import current_request_id
from cocoon.ledger.base import Ledger
from cocoon.ledger.network import open_ledger
from cocoon.ledger.translog import HeadStore
from cocoon.nodekeys import NodeKeys
from cocoon.ratls.cert import CertVerifier, IdentityIssuer

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
        request_id = current_request_id()
        if request_id is not None:
            entry["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _JSON.encode(entry).decode()


_JSON = msgspec.json.Encoder(enc_hook=str)  # what JSON cannot hold (a path, an enum) is logged as its text


class TurnHandler(logging.Handler):
    """Writes log lines to a file descriptor, the lines of one event-loop turn in one write.

    Every request logs a line in each process it crosses; written one by one through `sys.stderr`, each costs a
    system call on the hot path. Lines logged from the loop's thread wait for the end of the turn; a warning or
    worse and the process's exit (logging.shutdown) write at once, everything waiting before them first, in order
    (a line from another thread joins a write already due, else goes at once). A process killed outright loses at
    most the lines of the turn it was in."""

    def __init__(self, fd: int = 2) -> None:
        super().__init__()
        self._fd = fd
        self._lines: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        if record.levelno >= logging.WARNING:
            self.flush()
        elif not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop in this thread: nothing would flush later
                self.flush()
                return
            self._scheduled = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self.acquire()
        try:
            self._scheduled = False
            if not self._lines:
                return
            data = ("\n".join(self._lines) + "\n").encode()
            self._lines.clear()
            view = memoryview(data)
            with contextlib.suppress(OSError):  # a closed stderr must not take the process down
                while view:
                    view = view[os.write(self._fd, view):]
        finally:
            self.release()


def setup_logging(role: str, cfg: CommonConfig) -> None:
    # What a record would gather that no line shows (the formatter writes neither the caller's file and line nor
    # thread and process names): finding the caller walks the stack for each line (the logging HOWTO's
    # "Optimization" section names these switches).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    sys.stderr.flush()
    handler = TurnHandler(sys.stderr.fileno())
    handler.setFormatter(JsonFormatter(role, cfg.name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.log_level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def make_node_identity(role: str, cfg: CommonConfig, accept_roles: set[str], *, ledger: Ledger | None = None,
                       voucher_key: bytes = b"", model_hash: bytes = b"", model_hash_declared: bool = False
                       ) -> tuple[IdentityIssuer, CertVerifier]:
    """This process's attested identity (its certificate renewed as it ages), and the verifier for the peers
    it accepts.

    The claims carry the hash of the configuration that decides trust, the policy and a worker's engine
    (`cocoon.attest.trustconfig`), a proxy's `voucher_key`, a worker's `model_hash`. A policy that takes image
    hashes or engines from the root registry reads `ledger`, by default the chain its config names
    (ledger/network.py).
    """
    policy = load_policy(cfg.policy)
    config = trust_config(role, cfg, policy)
    if not policy.production_safe:
        log.warning("policy %r is NOT safe for production: it accepts fake attestation or any image",
                    policy.name, extra={"fields": {"policy": policy.name}})
    registry = None
    if policy.needs_registry:
        registry = RegistryImages(ledger or open_ledger(cfg), HeadStore(registry_head_path(cfg)))
    # Intel's collateral for TDX peers: cached in the state dir, fetched from `pccs_url` when missing.
    collateral = CollateralCache(cfg.state_path / "collateral", cfg.pccs_url or None)
    backend = get_backend(cfg.attestation, image=cfg.image, collateral=collateral)
    # the node's key is sealed to its role, image and name (nodekeys.py): the same after every restart
    identity = IdentityIssuer(role, backend, lifetime_s=cfg.cert_lifetime_s, hpke_key=X25519PrivateKey.generate(),
                              private_key=NodeKeys(role, cfg, backend).identity_key(), config=config,
                              voucher_key=voucher_key, model_hash=model_hash,
                              model_hash_declared=model_hash_declared)
    log.info("attested identity", extra={"fields": {"policy": policy.name, "config_hash": config.digest().hex(),
                                                    "engine_origin": config.engine_origin or None}})
    return identity, CertVerifier(policy, accept_roles, registry=registry, collateral=collateral)


def registry_head_path(cfg: CommonConfig) -> Path:
    """Where a node keeps the last tree head of the registry's transparency log it saw (ledger/translog.py)."""
    return cfg.state_path / f"{cfg.name}.registry-head.json"


def identity_stats(issuer: IdentityIssuer, image_hash: str | None = None) -> dict[str, Any]:
    """This node's attested identity as /jsonstats shows it: its kind, public key id and certificate expiry."""
    identity = issuer.current()
    return {"attestation": identity.claims.kind, "key": identity.public_key.hex()[:16],
            "cert_expires_at": round(identity.certificate.not_valid_after_utc.timestamp()),
            **({"image_hash": image_hash} if image_hash else {})}


def own_image_hash(cfg: CommonConfig) -> str | None:
    """This node's image hash as its peers will see it (hex), or None for attestation kind `none`."""
    backend = get_backend(cfg.attestation, image=cfg.image)
    measurements = read_quote(backend.kind, backend.quote(bytes(64))).measurements
    return measurements.image_hash().hex() if measurements else None


class Node(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def serve_until(node: Node, stop: asyncio.Event) -> None:
    """Start `node`, keep it up until `stop` is set, and stop it even if starting or waiting fails."""
    await node.start()
    try:
        await stop.wait()
    finally:
        await node.stop()


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop)` until it returns; SIGINT/SIGTERM set `stop` so it can shut down cleanly."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    # uvloop: the same asyncio API with a faster loop and socket layer (the relay hot path is syscall-bound)
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop:
        loop.run(runner())
