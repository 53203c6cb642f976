"""Which peers to trust: allowed attestation kinds, image hashes and certificate ages per role (DESIGN §2).

A policy file is TOML with the fields of `Policy`:

    name = "prod"
    production_safe = true

    [roles.worker]
    kinds = ["tdx"]
    image_hashes = ["<64 lowercase hex>"]

    [roles.client]
    kinds = ["none"]

A role without a table is refused.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from pathlib import Path

import msgspec

from cocoon.attest.types import KINDS, ROLES, AttestationError

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


class PolicyError(ValueError):
    """A policy that cannot be loaded or is inconsistent; the message names the file and the field."""


class RolePolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kinds: frozenset[str]
    image_hashes: frozenset[str] | None = None  # lowercase hex SHA-256; None accepts any image
    max_cert_age_s: float = 86400 * 2
    max_skew_s: float = 300

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown attestation kinds {unknown}; expected some of {list(KINDS)}")
        for h in self.image_hashes or ():
            if not _HEX_SHA256.fullmatch(h):
                raise ValueError(f"image hash {h!r} is not 64 lowercase hex characters (a SHA-256)")
        if self.max_cert_age_s <= 0 or self.max_skew_s < 0:
            raise ValueError("max_cert_age_s must be positive and max_skew_s not negative")


class Policy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    roles: dict[str, RolePolicy]
    production_safe: bool

    def __post_init__(self) -> None:
        unknown = sorted(set(self.roles) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown roles {unknown}; expected some of {list(ROLES)}")
        if self.production_safe:
            # Fake quotes are forgeable by anyone, and only clients (outside any TEE) may go unattested.
            for role, rules in self.roles.items():
                if "fake" in rules.kinds or ("none" in rules.kinds and role != "client"):
                    raise ValueError(
                        f"a production_safe policy cannot allow kinds {sorted(rules.kinds)} for role {role!r}"
                    )

    def rules_for(self, role: str) -> RolePolicy:
        rules = self.roles.get(role)
        if rules is None:
            raise AttestationError(f"policy {self.name!r} refuses peers of role {role!r}")
        return rules


DEV_POLICY = Policy(
    name="dev",
    roles={
        "proxy": RolePolicy(kinds=frozenset({"fake", "tdx"})),
        "worker": RolePolicy(kinds=frozenset({"fake", "tdx"})),
        "client": RolePolicy(kinds=frozenset({"none", "fake", "tdx"})),
    },
    production_safe=False,
)


def load_policy(spec: str) -> Policy:
    """'dev' for DEV_POLICY, otherwise the path of a TOML policy file; PolicyError says what is wrong."""
    if spec == "dev":
        return DEV_POLICY
    path = Path(spec)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as e:
        raise PolicyError(
            f"cannot read policy file {path} ({e.strerror}); expected 'dev' or a TOML file"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"policy file {path} is not valid TOML: {e}") from None
    # Role tables first, one by one: msgspec's error paths hide dict keys, and the role is what to fix.
    roles = raw.get("roles")
    for role, table in roles.items() if isinstance(roles, dict) else ():
        try:
            msgspec.convert(table, RolePolicy)
        except msgspec.ValidationError as e:
            raise PolicyError(f"policy file {path}, [roles.{role}]: {e}") from None
    try:
        return msgspec.convert(raw, Policy)
    except msgspec.ValidationError as e:
        raise PolicyError(f"policy file {path}: {e}") from None


def with_image_hashes(policy: Policy, role: str, hashes: Iterable[bytes | str]) -> Policy:
    """A copy of `policy` in which `role` accepts only these image hashes (raw 32 bytes or hex)."""
    rules = policy.roles.get(role)
    if rules is None:
        raise PolicyError(f"policy {policy.name!r} has no rules for role {role!r} to restrict")
    allowed = frozenset(h.hex() if isinstance(h, bytes) else h for h in hashes)
    roles = {**policy.roles, role: msgspec.structs.replace(rules, image_hashes=allowed)}
    return msgspec.structs.replace(policy, roles=roles)
