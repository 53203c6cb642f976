"""Which peers to trust, per peer role: attestation kinds, measurements, TCB statuses, certificate ages.

A policy file is TOML with the fields of `Policy`:

    name = "prod"
    production_safe = true

    [roles.worker]
    kinds = ["tdx"]
    image_hashes = ["<64 lowercase hex>"]   # or "registry": the root registry's list for this role
    mrtds = ["<96 lowercase hex>"]          # optional
    tcb_statuses = ["UpToDate"]             # optional; default UpToDate and SWHardeningNeeded
    max_cert_age_s = 86400
    max_skew_s = 300

    [roles.worker.rtmrs]                    # optional, per register
    rtmr1 = ["<96 lowercase hex>"]

    [roles.client]
    kinds = ["none"]

A role without a table is refused. Built-in names for `--policy`: "dev", "tdx-any", "production".
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, Protocol

import msgspec

from cocoon.attest.types import (
    DEFAULT_TCB_STATUSES,
    KINDS,
    ROLES,
    TCB_STATUSES,
    AttestationError,
    VerifiedQuote,
)
from cocoon.core.errors import CocoonError
from cocoon.ledger.base import REGISTRY_ROLES, image_hash_hex

_HEX_REGISTER = re.compile(r"[0-9a-f]{96}")
_RTMR_NAMES = ("rtmr0", "rtmr1", "rtmr2", "rtmr3")


class PolicyError(ValueError, CocoonError):
    """A policy that cannot be loaded or is inconsistent; the message names the file and the field."""


class ImageRegistry(Protocol):
    """The root registry's image allow-lists at one version (`cocoon.ledger.base.RootParams` is one)."""

    @property
    def version(self) -> int: ...

    def allowed_images(self, role: str) -> frozenset[str]: ...


class RolePolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kinds: frozenset[str]
    # Lowercase hex SHA-256s; None accepts any image; "registry" takes the root registry's list for the role.
    image_hashes: frozenset[str] | Literal["registry"] | None = None
    mrtds: frozenset[str] | None = None  # lowercase hex; None accepts any MRTD
    rtmrs: dict[str, frozenset[str]] = {}  # "rtmr0".."rtmr3" -> accepted lowercase hex values
    tcb_statuses: frozenset[str] = DEFAULT_TCB_STATUSES  # judged for tdx only: fake and none have no TCB
    max_cert_age_s: float = 86400 * 2
    max_skew_s: float = 300

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown attestation kinds {unknown}; expected some of {list(KINDS)}")
        if self.image_hashes != "registry":
            for h in self.image_hashes or ():
                image_hash_hex(h)
        unknown = sorted(set(self.rtmrs) - set(_RTMR_NAMES))
        if unknown:
            raise ValueError(f"unknown registers {unknown} in rtmrs; expected some of {list(_RTMR_NAMES)}")
        for value in (*(self.mrtds or ()), *(v for values in self.rtmrs.values() for v in values)):
            if not _HEX_REGISTER.fullmatch(value):
                raise ValueError(f"register value {value!r} is not 96 lowercase hex characters (48 bytes)")
        unknown = sorted(set(self.tcb_statuses) - set(TCB_STATUSES))
        if unknown or not self.tcb_statuses:
            raise ValueError(f"tcb_statuses {sorted(self.tcb_statuses)} must be a non-empty subset of "
                             f"{list(TCB_STATUSES)}")
        if self.max_cert_age_s <= 0 or self.max_skew_s < 0:
            raise ValueError("max_cert_age_s must be positive and max_skew_s not negative")

    @property
    def checks_measurements(self) -> bool:
        return self.image_hashes is not None or self.mrtds is not None or bool(self.rtmrs)


class Policy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    roles: dict[str, RolePolicy]
    production_safe: bool

    def __post_init__(self) -> None:
        unknown = sorted(set(self.roles) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown roles {unknown}; expected some of {list(ROLES)}")
        for role, rules in self.roles.items():
            if rules.image_hashes == "registry" and role not in REGISTRY_ROLES:
                raise ValueError(f"role {role!r} cannot take image hashes from the registry, which lists only "
                                 f"{list(REGISTRY_ROLES)}")
            if self.production_safe:
                _check_production_safe(role, rules)

    @property
    def needs_registry(self) -> bool:
        return any(rules.image_hashes == "registry" for rules in self.roles.values())

    def rules_for(self, role: str) -> RolePolicy:
        rules = self.roles.get(role)
        if rules is None:
            raise AttestationError(f"policy {self.name!r} refuses peers of role {role!r}")
        return rules

    def check_kind(self, role: str, kind: str) -> RolePolicy:
        """The role's rules, if they allow attestation `kind` (checked before any costly quote verification)."""
        rules = self.rules_for(role)
        if kind not in rules.kinds:
            raise AttestationError(
                f"attestation kind {kind!r} is not allowed for role {role!r} by policy {self.name!r} "
                f"(allowed: {', '.join(sorted(rules.kinds))})"
            )
        return rules

    def check_quote(self, role: str, verified: VerifiedQuote, registry: ImageRegistry | None = None) -> None:
        """Refuses a verified quote whose kind, TCB status or measurements this policy does not accept."""
        rules = self.check_kind(role, verified.kind)
        if verified.tcb_status is not None and verified.tcb_status not in rules.tcb_statuses:
            raise AttestationError(
                f"TCB status {verified.tcb_status!r} is not accepted for role {role!r} by policy {self.name!r} "
                f"(accepted: {', '.join(sorted(rules.tcb_statuses))})"
            )
        if not rules.checks_measurements:
            return
        m = verified.measurements
        if m is None:
            what = "an image hash" if rules.image_hashes is not None else "an MRTD or RTMRs"
            raise AttestationError(
                f"policy {self.name!r} requires {what} for role {role!r}, but kind {verified.kind!r} "
                "has no measurements"
            )
        if rules.mrtds is not None and m.mrtd.hex() not in rules.mrtds:
            raise AttestationError(f"MRTD {m.mrtd.hex()} is not allowed for role {role!r} by policy {self.name!r}")
        for name, accepted in sorted(rules.rtmrs.items()):
            value = m.rtmr[_RTMR_NAMES.index(name)].hex()
            if value not in accepted:
                raise AttestationError(
                    f"{name.upper()} {value} is not allowed for role {role!r} by policy {self.name!r}"
                )
        image_hash = m.image_hash().hex()
        if rules.image_hashes == "registry":
            if registry is None:
                raise AttestationError(f"policy {self.name!r} takes the image hashes of role {role!r} from the "
                                       "root registry, but no registry is connected")
            if image_hash not in registry.allowed_images(role):
                raise AttestationError(
                    f"image hash {image_hash} is not allowed for role {role!r} by policy {self.name!r}: "
                    f"not in the root registry (version {registry.version})"
                )
        elif rules.image_hashes is not None and image_hash not in rules.image_hashes:
            raise AttestationError(
                f"image hash {image_hash} is not allowed for role {role!r} by policy {self.name!r}"
            )


def _check_production_safe(role: str, rules: RolePolicy) -> None:
    # Fake quotes are forgeable by anyone and only clients (outside any TEE, known by their key) may go
    # unattested; and since a TD can run any code, the TEE roles need a restricted image as well.
    if "fake" in rules.kinds or ("none" in rules.kinds and role != "client"):
        raise ValueError(f"a production_safe policy cannot allow kinds {sorted(rules.kinds)} for role {role!r}")
    if role != "client" and rules.image_hashes is None:
        raise ValueError(f"a production_safe policy must restrict the image hashes of role {role!r}")


_TDX = frozenset({"tdx"})
# Clients run on ordinary app servers and pay for what they use: their key is what identifies them.
_CLIENTS = RolePolicy(kinds=frozenset({"none", "tdx"}))

DEV_POLICY = Policy(
    name="dev",
    roles={
        "proxy": RolePolicy(kinds=frozenset({"fake", "tdx"})),
        "worker": RolePolicy(kinds=frozenset({"fake", "tdx"})),
        "client": RolePolicy(kinds=frozenset({"none", "fake", "tdx"})),
    },
    production_safe=False,
)
TDX_ANY_POLICY = Policy(
    name="tdx-any",
    roles={"proxy": RolePolicy(kinds=_TDX), "worker": RolePolicy(kinds=_TDX), "client": _CLIENTS},
    production_safe=False,  # real TDs, but running any code at all
)
PRODUCTION_POLICY = Policy(
    name="production",
    roles={
        "proxy": RolePolicy(kinds=_TDX, image_hashes="registry"),
        "worker": RolePolicy(kinds=_TDX, image_hashes="registry"),
        "client": _CLIENTS,
    },
    production_safe=True,
)
BUILTIN_POLICIES = {p.name: p for p in (DEV_POLICY, TDX_ANY_POLICY, PRODUCTION_POLICY)}


def load_policy(spec: str) -> Policy:
    """A built-in policy by name, otherwise the path of a TOML policy file; PolicyError says what is wrong."""
    builtin = BUILTIN_POLICIES.get(spec)
    if builtin is not None:
        return builtin
    path = Path(spec)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as e:
        raise PolicyError(
            f"cannot read policy file {path} ({e.strerror}); expected one of {', '.join(BUILTIN_POLICIES)} "
            "or a TOML file"
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
    allowed = frozenset(image_hash_hex(h) for h in hashes)
    roles = {**policy.roles, role: msgspec.structs.replace(rules, image_hashes=allowed)}
    return msgspec.structs.replace(policy, roles=roles)
