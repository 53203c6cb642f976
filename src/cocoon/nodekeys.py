"""A node's long-lived keys, all bound by its platform's key service to its verified role, image and name
(`cocoon.ratls.sealing`), through this one path:

- its RA-TLS identity key (`NAME/identity`): derived, never stored;
- its wallet seed (`STATE_DIR/NAME.wallet`) and, for a proxy, its voucher key (`STATE_DIR/NAME.voucher-key`):
  random, stored sealed (`cocoon.ratls.sealed_file`) under a key derived the same way (`NAME/wallet`,
  `NAME/voucher-key`), so a copied file is useless on another platform, image, role or name. A plain key file
  written by an older version is sealed in place the first time it is used (same key, same address).

Where the keys come from:
- a node configured with `key_service` (`tdx` or `fake`) asks that service (`cocoon keys`, `cocoon.keyclient`)
  over RA-TLS: every key, the wallet and voucher key too, is derived by the service for the node's verified image,
  role and name and never stored here, so a node gets the same keys after a restart and on another machine;
- `fake` otherwise: the fake platform's key service in this process, whose secret is `STATE_DIR/platform-secret`;
- `none` (a client on an ordinary server): there is no image and no key service; stored keys are bound to role
  and name under that same local secret (machine-bound), and the identity key is fresh at each start;
- `tdx` without `key_service`: the identity key is fresh at each start and stored keys are refused
  (`KeysUnavailable`), since a wallet that changed at every start would strand its money.
"""

from __future__ import annotations

import functools
import logging
import secrets
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cocoon.attest.backends import AttestationBackend, get_backend
from cocoon.attest.policy import Policy, RolePolicy
from cocoon.attest.types import AttestationError
from cocoon.config import ClientConfig, CommonConfig, ConfigError, ProxyConfig, WorkerConfig, load_config
from cocoon.fsutil import SECRET_MODE, create_once, private_dir, write_atomically
from cocoon.keyclient import fetch_keys
from cocoon.ledger.ton import wallet_v4r2_address
from cocoon.ledger.wallet import Wallet
from cocoon.ratls.cert import CertVerifier, Identity, make_identity
from cocoon.ratls.sealed_file import Header, SealedFileError, is_legacy, read_header, seal, unseal
from cocoon.ratls.sealing import SealedKeyService, derive_key, local_platform_secret

log = logging.getLogger(__name__)

IDENTITY = "identity"
WALLET = "wallet"
VOUCHER_KEY = "voucher-key"
SEED_LEN = 32
ROLE_CONFIGS: dict[str, type[CommonConfig]] = {"proxy": ProxyConfig, "worker": WorkerConfig, "client": ClientConfig}


class KeysUnavailable(ValueError):
    """This node cannot hold a stored key here; the message says why and what to do."""


def key_path(state_dir: Path, name: str, purpose: str) -> Path:
    """Where node `name` keeps its sealed `purpose` key: `STATE_DIR/NAME.wallet`, `STATE_DIR/NAME.voucher-key`."""
    return state_dir / f"{name}.{purpose}"


class NodeKeys:
    def __init__(self, role: str, cfg: CommonConfig, backend: AttestationBackend | None = None) -> None:
        self.role = role
        self.cfg = cfg
        self.backend = backend or get_backend(cfg.attestation, image=cfg.image)
        self._fetched: dict[str, bytes] = {}

    @property
    def remote(self) -> bool:
        """Whether this node's keys come from a key service over the network (`key_service`)."""
        return bool(self.cfg.key_service) and self.backend.kind != "none"

    # ---- the one path to the key service ----
    def sealed_key(self, purpose: str) -> bytes:
        """The key `NAME/purpose` that the platform's key service gives this node's role and image."""
        key_name = f"{self.cfg.name}/{purpose}"
        kind = self.backend.kind
        if self.remote:
            if key_name not in self._fetched:
                try:
                    self._fetched.update(fetch_keys(self.cfg.key_service, self.role, self.backend, [key_name],
                                                    policy=self.cfg.policy))
                except (ConnectionError, AttestationError) as exc:
                    log.error("no key from the key service", extra={"fields": {
                        "key_service": self.cfg.key_service, "key": key_name, "reason": str(exc)}})
                    raise KeysUnavailable(f"{self.role} {self.cfg.name}: {exc}") from None
            return self._fetched[key_name]
        if kind == "fake":
            return self._service.request(self._requester, key_name)
        if kind == "none":
            return derive_key(local_platform_secret(self.cfg.state_path), self.role, None, key_name)
        raise KeysUnavailable(
            f"{self.role} {self.cfg.name}: attestation {kind!r} has no key service configured on this platform, "
            f"so its wallet and voucher keys cannot be sealed; run it with payments off, or with a key service")

    @functools.cached_property
    def _service(self) -> SealedKeyService:
        # The key service serves any genuine quote of its platform: the key it derives is bound to the verified
        # role and image hash, so each image in each role can only ever obtain its own keys.
        any_image = Policy(name="key-service", roles={self.role: RolePolicy(kinds=frozenset({self.backend.kind}))},
                           production_safe=False)
        return SealedKeyService(local_platform_secret(self.cfg.state_path), CertVerifier(any_image, {self.role}))

    @functools.cached_property
    def _requester(self) -> Identity:
        """A short-lived attested identity that asks the key service (its HPKE key opens the answers)."""
        return make_identity(self.role, self.backend, lifetime_s=300, hpke_key=X25519PrivateKey.generate())

    # ---- the keys ----
    def identity_key(self) -> Ed25519PrivateKey | None:
        """The node's RA-TLS key, the same after every restart so that its peers (the proxy's reputation book,
        payment channels) keep recognising it; None (a fresh key per start) where there is no key service, and
        for a node without attestation, whose link key is not meant to follow it."""
        if self.backend.kind != "fake" and not self.remote:
            return None
        return Ed25519PrivateKey.from_private_bytes(self.sealed_key(IDENTITY))

    def wallet(self, address: str | None = None) -> Wallet:
        """The node's wallet: the standard wallet v4r2 of its key (deployed by its first operation), unless
        `address` names another wallet contract the key controls."""
        seed = self.stored_secret(WALLET)
        return Wallet(seed, address or wallet_v4r2_address(Wallet(seed).public_key))

    def voucher_key(self) -> Wallet:
        return Wallet(self.stored_secret(VOUCHER_KEY))

    def stored_secret(self, purpose: str, initial: bytes | None = None) -> bytes:
        """The 32-byte seed in `STATE_DIR/NAME.purpose`: created on first use, sealed to this node. From a key
        service, the key it derives is the seed itself: nothing to store, the same on any machine. `initial`: what a
        first use stores instead of a random seed."""
        if self.remote:
            return self.sealed_key(purpose)
        sealing_key = self.sealed_key(purpose)  # first: nothing is written where keys cannot be sealed
        header = Header(self.role, f"{self.cfg.name}/{purpose}")
        path = key_path(private_dir(self.cfg.state_path), self.cfg.name, purpose)
        if not path.exists():
            first = initial if initial is not None else secrets.token_bytes(SEED_LEN)
            blob = create_once(path, seal(sealing_key, header, first), SECRET_MODE)
        else:
            blob = path.read_bytes()
            if is_legacy(blob):  # a plain seed from an older version: keep the key (its money), seal the file
                blob = seal(sealing_key, header, blob)
                write_atomically(path, blob, SECRET_MODE)
                log.warning("sealed a plain key file written by an older version",
                            extra={"fields": {"file": str(path), "role": self.role}})
        secret = unseal(sealing_key, blob, header, str(path))
        if len(secret) != SEED_LEN:
            raise SealedFileError(f"{path} holds {len(secret)} bytes, expected a {SEED_LEN}-byte seed")
        return secret


def node_dir(state_dir: Path, name: str) -> Path:
    """Where node `name` of a local network keeps its files: its own directory `STATE_DIR/NAME` (what `cocoon up`
    gives each node), or the network's state dir itself for a network whose nodes share one."""
    own = state_dir / name
    return own if own.is_dir() else state_dir


def operator_keys(state_dir: Path, name: str) -> NodeKeys:
    """The keys of node `name` of a local network, as its operator opens them on the same machine (`cocoon
    ledger`): its role read from its sealed wallet, its attestation and image from `STATE_DIR/NAME.toml`. They are
    obtained through the same key service as the node's own, so only the same platform, image and role open them."""
    config = state_dir / f"{name}.toml"
    state_dir = node_dir(state_dir, name)
    wallet = key_path(state_dir, name, WALLET)
    try:
        blob = wallet.read_bytes()
    except FileNotFoundError:
        raise KeysUnavailable(f"no wallet {wallet}") from None
    if is_legacy(blob):
        raise KeysUnavailable(f"{wallet} is a plain key file of an older version: start the node (or `cocoon up`) "
                              f"once to seal it")
    role = read_header(blob, str(wallet)).role
    kind = ROLE_CONFIGS.get(role)
    if kind is None:
        raise SealedFileError(f"{wallet} names role {role!r}, which is none of {', '.join(ROLE_CONFIGS)}")
    try:
        cfg = load_config(config, kind)
    except ConfigError as exc:
        raise KeysUnavailable(f"{name}'s wallet is sealed to its image, which its config tells: {exc}") from None
    # the state dir given is the one that holds the keys, whatever the config file says
    return NodeKeys(role, msgspec.structs.replace(cfg, state_dir=str(state_dir)))
