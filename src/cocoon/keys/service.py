"""The key service (`cocoon keys`): derives keys from its master secret and hands them over RA-TLS, each bound to
the requester's verified image, role and name, only to peers whose image the root registry allows for that role.

Protocol and requester: `cocoon.keyclient`. Derivation and delivery: `cocoon.ratls.sealing` (HKDF over role,
image hash and key name; HPKE to the X25519 key in the requester's attested claims).

Why each refusal: a certificate attesting one role asking for another role's keys (a worker image that could also
run as a proxy must never obtain the proxy's voucher key while it runs as a worker); a peer without an image
(attestation `none`: nothing binds a key to code); an image the registry does not allow for the role. The reason is
sent back, so it lands in the refused peer's log, and logged here.

The master secret: on the `fake` platform (and wherever this process can seal files) it is stored sealed in
`STATE_DIR/NAME.master` (`cocoon.ratls.sealed_file`); it is copied from another instance (`replicate_from`), which
hands it only to a key service running its own image, or created at the first start, and then, when the operator
configured `recovery_public_key`, also written encrypted to that offline key (`STATE_DIR/NAME.master-backup`).
`cocoon keys restore` puts such a backup into a new instance.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from prometheus_client import CollectorRegistry, Counter

from cocoon.attest.registry import RegistryImages
from cocoon.attest.types import AttestationError, PeerIdentity
from cocoon.config import KeysConfig
from cocoon.fsutil import SECRET_MODE, private_dir, write_atomically
from cocoon.keyclient import (
    MASTER,
    MAX_NAMES,
    KeyRefused,
    KeyReply,
    KeyRequest,
    KeyServiceError,
    encode,
    fetch_keys,
    receive,
)
from cocoon.ledger.network import open_ledger
from cocoon.nodekeys import KeysUnavailable, NodeKeys, key_path
from cocoon.observe.stats import StatsServer
from cocoon.ratls import tls
from cocoon.ratls.sealing import SEALED_KEY_LEN, SealedKeyService, decrypt_with, encrypt_to, seal_secret
from cocoon.runtime import identity_stats, make_node_identity, own_image_hash, serve_until

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0
_BACKUP_INFO = b"cocoon key service master backup v1\0"
PEER_ROLES = frozenset({"proxy", "worker", "client", "keys"})


class KeyRefusal(Exception):
    """Why a request is refused: sent to the peer and logged."""


def backup_path(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.master-backup"


def encrypt_backup(master: bytes, recovery_public_key: str) -> bytes:
    try:
        public = bytes.fromhex(recovery_public_key)
    except ValueError:
        raise ValueError("recovery_public_key is not hex (a raw 32-byte X25519 public key)") from None
    if len(public) != 32:
        raise ValueError(f"recovery_public_key has {len(public)} bytes, expected a 32-byte X25519 public key")
    return encrypt_to(public, _BACKUP_INFO, master)


def decrypt_backup(backup: bytes, recovery_private_key: bytes) -> bytes:
    """The master secret in a backup, opened with the operator's recovery key (ValueError if it does not open)."""
    master = decrypt_with(X25519PrivateKey.from_private_bytes(recovery_private_key), _BACKUP_INFO, backup)
    if len(master) != SEALED_KEY_LEN:
        raise ValueError(f"the backup holds {len(master)} bytes, expected a {SEALED_KEY_LEN}-byte master secret")
    return master


class MasterSecret:
    """Where this instance's master secret comes from, and where it is kept."""

    def __init__(self, cfg: KeysConfig, keys: NodeKeys) -> None:
        self.cfg = cfg
        self.keys = keys
        self.origin = ""

    def load(self, initial: bytes | None = None) -> bytes:
        """The master: stored sealed when this platform can seal it (else kept in memory), replicated from a peer
        at the first start when `replicate_from` names one, else created (and backed up)."""
        stored = key_path(self.cfg.state_path, self.cfg.name, MASTER)
        sealable = self._sealable()
        if sealable and stored.exists() and initial is None:
            self.origin = "sealed file"
            return self.keys.stored_secret(MASTER)
        if initial is not None:
            self.origin = "restored backup"
        elif self.cfg.replicate_from:
            initial = self._replicate()
            self.origin = f"replicated from {self.cfg.replicate_from}"
        else:
            if not sealable and not self.cfg.recovery_public_key:
                raise KeysUnavailable(
                    f"key service {self.cfg.name}: attestation {self.keys.backend.kind!r} cannot seal the master "
                    "secret here: set `replicate_from` (a running instance) or `recovery_public_key` (an offline "
                    "backup), or every key it derives would be lost at its next restart")
            initial = secrets.token_bytes(SEALED_KEY_LEN)
            self.origin = "created"
            if self.cfg.recovery_public_key:
                path = backup_path(private_dir(self.cfg.state_path), self.cfg.name)
                write_atomically(path, encrypt_backup(initial, self.cfg.recovery_public_key), SECRET_MODE)
                log.info("master secret backed up to the recovery key", extra={"fields": {"file": str(path)}})
        if not sealable:
            return initial
        master = self.keys.stored_secret(MASTER, initial)
        if master != initial:
            raise KeysUnavailable(f"{stored} already holds another master secret: remove it to restore or replicate")
        return master

    def _sealable(self) -> bool:
        try:
            self.keys.sealed_key(MASTER)
        except KeysUnavailable:
            return False
        return True

    def _replicate(self) -> bytes:
        try:
            return fetch_keys(self.cfg.replicate_from, "keys", self.keys.backend, [MASTER],
                              policy=self.cfg.policy)[MASTER]
        except (KeyServiceError, AttestationError) as exc:
            raise KeysUnavailable(f"cannot copy the master secret from {self.cfg.replicate_from}: {exc}") from None


class KeyService:
    def __init__(self, cfg: KeysConfig) -> None:
        if cfg.key_service:
            raise ValueError("a key service keeps its own master secret: `key_service` must be empty "
                             "(use `replicate_from` to copy another instance's master)")
        self.cfg = cfg
        self.identity, self.verifier = make_node_identity("keys", cfg, set(PEER_ROLES))
        self.image_hash = own_image_hash(cfg)
        node_keys = NodeKeys("keys", cfg, self.identity.backend)
        self.master = MasterSecret(cfg, node_keys)
        self._master = self.master.load()
        self._service = SealedKeyService(self._master, self.verifier)
        self.ledger = open_ledger(cfg)  # the chain its config names (ledger/network.py)
        self.registry = RegistryImages(self.ledger)
        metrics = CollectorRegistry()
        self.answers = Counter("cocoon_keys_answers", "Key requests by outcome", ["outcome"], registry=metrics)
        self.stats = StatsServer("keys", cfg.name, metrics, self.jsonstats, token=cfg.stats_token)
        self.granted = 0
        self.refused = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await tls.serve(self._on_peer, self.cfg.host, self.cfg.port, self.identity, self.verifier)
        self.port = self._server.sockets[0].getsockname()[1]
        await self.stats.start(self.cfg.stats_host, self.cfg.stats_port)
        log.info("key service listening", extra={"fields": {"port": self.port, "stats_port": self.stats.port,
                                                            "master": self.master.origin}})

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.stats.stop()
        self.ledger.close()

    async def _on_peer(self, stream: tls.TlsStream) -> None:
        peer = stream.peer
        try:
            request = await asyncio.wait_for(receive(stream), REQUEST_TIMEOUT_S)
        except (TimeoutError, KeyServiceError, OSError) as exc:
            log.warning("no key request", extra={"fields": {"peer": stream.peername, "reason": str(exc)}})
            return
        fields: dict[str, Any] = {"peer": stream.peername, "role": peer.role, "kind": peer.kind,
                                  "image_hash": peer.image_hash.hex() if peer.image_hash else None,
                                  "key": peer.public_key.hex()[:16]}
        try:
            if not isinstance(request, KeyRequest):
                raise KeyRefusal(f"expected a key request, got {type(request).__name__}")
            fields.update(asked_role=request.role, names=request.names)
            envelopes = await asyncio.to_thread(self._answer, peer, request)
        except KeyRefusal as exc:
            self.refused += 1
            self.answers.labels("refused").inc()
            log.warning("refused a key request", extra={"fields": {**fields, "reason": str(exc)}})
            stream.write(encode(KeyRefused(reason=str(exc))))
        else:
            self.granted += 1
            self.answers.labels("granted").inc()
            log.info("handed out keys", extra={"fields": fields})
            stream.write(encode(KeyReply(envelopes=envelopes)))
        await stream.drain()

    def _answer(self, peer: PeerIdentity, request: KeyRequest) -> list[bytes]:
        """The envelopes for `request`, or KeyRefusal saying why not (runs in a thread: it may read the chain)."""
        if request.role != peer.role:
            raise KeyRefusal(f"the certificate attests role {peer.role!r}: it cannot obtain the keys of role "
                             f"{request.role!r}")
        if not 1 <= len(request.names) <= MAX_NAMES:
            raise KeyRefusal(f"ask for 1 to {MAX_NAMES} keys at a time, not {len(request.names)}")
        if peer.image_hash is None:
            raise KeyRefusal(f"attestation kind {peer.kind!r} proves no image: keys are bound to an image")
        image = peer.image_hash.hex()
        if peer.role == "keys":  # another instance asking for the master: only the very same code gets it
            if request.names != [MASTER] or image != self.image_hash:
                raise KeyRefusal(f"the master secret goes only to a key service running image {self.image_hash}, "
                                 f"asking for it alone; this one runs {image}")
            return [seal_secret(peer, MASTER, self._master)]
        params = self.registry.current()
        if image not in params.allowed_images(peer.role):
            raise KeyRefusal(f"image hash {image} is not allowed for role {peer.role!r} by the root registry "
                             f"(version {params.version})")
        try:
            return [self._service.seal_for_peer(peer, name) for name in request.names]
        except (AttestationError, ValueError) as exc:
            raise KeyRefusal(str(exc)) from None

    def jsonstats(self) -> dict[str, Any]:
        return {"identity": identity_stats(self.identity, self.image_hash), "image_hash": self.image_hash,
                "master": self.master.origin, "granted": self.granted, "refused": self.refused,
                "port": self.port}


async def run_keys(cfg: KeysConfig, stop: asyncio.Event) -> None:
    await serve_until(KeyService(cfg), stop)
