"""The configuration that decides whether a node can be trusted, and its hash in the node's claims.

The image hash proves the code; the same genuine image configured with `engine = "openai:http://operator-host/…"`
sends every prompt in the clear to that host, and started with a lax policy admits anyone. So each node hashes
what of its configuration decides trust into its claims (`config_hash`), next to the few parts a peer's policy
reads in clear (engine kind and origin, its own policy). Policies pin allowed hashes per role
(`RolePolicy.config_hashes`); `cocoon attest config-hash` prints a configuration's hash.

Hashed (and nothing else: names, ports, limits and timeouts do not change whom a node trusts or what it does with
prompts and money): the role, the node's policy (its content, wherever it was loaded from, but for its pins), whether
it pays or gets paid, and per role the worker's engine kind and origin and its price coefficient, the proxy's
prices.
"""

from __future__ import annotations

import hashlib

import msgspec

from cocoon.attest.engines import engine_site
from cocoon.attest.policy import Policy
from cocoon.config import CommonConfig, Prices, ProxyConfig, WorkerConfig

_DOMAIN = b"cocoon-config-v1\0"


class TrustConfig(msgspec.Struct, frozen=True, kw_only=True):
    role: str
    policy: Policy
    payments: bool
    engine: str = ""  # worker: embedded | fake | openai
    engine_origin: str = ""  # worker: where an `openai:` engine runs (scheme://host:port); "" in-process
    coefficient: int | None = None  # worker
    prices: Prices | None = None  # proxy

    def digest(self) -> bytes:
        """SHA-256 of the canonical encoding: msgpack with fields in declaration order and every set and map
        sorted, so equal configurations hash equally on every machine.

        The policy's own pins (`config_hashes`) are left out: one policy file can then pin the hashes of the
        configurations that run it. A node's pins still reach its peers, in clear with its policy, where a peer
        refusing weaker policies compares them."""
        roles = {role: msgspec.structs.replace(rules, config_hashes=None) for role, rules in self.policy.roles.items()}
        hashed = msgspec.structs.replace(self, policy=msgspec.structs.replace(self.policy, roles=roles))
        return hashlib.sha256(_DOMAIN + msgspec.msgpack.encode(hashed, order="deterministic")).digest()


def trust_config(role: str, cfg: CommonConfig, policy: Policy) -> TrustConfig:
    """What of `cfg` (a role's configuration, with its loaded `policy`) decides trust; ValueError for an engine
    that cannot be named."""
    if isinstance(cfg, WorkerConfig):
        engine, origin = engine_site(cfg.engine)
        return TrustConfig(role=role, policy=policy, payments=cfg.payments, engine=engine, engine_origin=origin,
                           coefficient=cfg.coefficient)
    if isinstance(cfg, ProxyConfig):
        return TrustConfig(role=role, policy=policy, payments=cfg.payments, prices=cfg.prices)
    return TrustConfig(role=role, policy=policy, payments=cfg.payments)
