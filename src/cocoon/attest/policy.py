"""Which peers to trust, per peer role: attestation kinds, measurements, TCB statuses, certificate ages, and the
configuration the peer runs with.

A policy file is TOML with the fields of `Policy`:

    name = "prod"
    production_safe = true
    refuse_weaker_peers = true              # proxies and workers must run a policy at least as strict

    [roles.worker]
    kinds = ["tdx"]
    image_hashes = ["<64 lowercase hex>"]   # or "registry": the root registry's list for this role
    mrtds = ["<96 lowercase hex>"]          # optional
    tcb_statuses = ["UpToDate"]             # optional; default UpToDate and SWHardeningNeeded
    config_hashes = ["<64 lowercase hex>"]  # optional: `cocoon attest config-hash` of the allowed configurations
    remote_engines = "registry"             # engines outside the image: "any" (default), "registry", "refuse"
    model_hashes = "registry"               # the weights' SHA-256 a worker claims, per model: "any" (default) or
                                            # "registry": listed in the root registry for each model it serves
    max_cert_age_s = 86400
    max_skew_s = 300

    [roles.worker.rtmrs]                    # optional, per register
    rtmr1 = ["<96 lowercase hex>"]

    [roles.client]
    kinds = ["none"]

A role without a table is refused. Built-in names for `--policy`: "dev", "tdx-any", "production".

What a peer runs with is in its claims (`cocoon.attest.trustconfig`): the hash of its trust-deciding
configuration, its engine's origin and its own policy. A genuine image states them truthfully, so the image hash
vouches for them as it does for the code.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, Protocol

import msgspec

from cocoon.attest.engines import runs_outside
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
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_RTMR_NAMES = ("rtmr0", "rtmr1", "rtmr2", "rtmr3")


class PolicyError(ValueError, CocoonError):
    """A policy that cannot be loaded or is inconsistent; the message names the file and the field."""


class RegistryView(Protocol):
    """The root registry's allow-lists at one version (`cocoon.ledger.base.RootParams` is one)."""

    @property
    def version(self) -> int: ...

    def allowed_images(self, role: str) -> frozenset[str]: ...

    def allows_engine(self, model: str, origin: str) -> bool: ...

    def allows_model(self, model: str, weights_sha256: str) -> bool: ...


RemoteEngines = Literal["any", "registry", "refuse"]
ModelHashes = Literal["any", "registry"]
_PLURAL = {"proxy": "proxies", "worker": "workers"}
_ENGINE_STRICTNESS: dict[str, int] = {"any": 0, "registry": 1, "refuse": 2}


class RolePolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kinds: frozenset[str]
    # Lowercase hex SHA-256s; None accepts any image; "registry" takes the root registry's list for the role.
    image_hashes: frozenset[str] | Literal["registry"] | None = None
    mrtds: frozenset[str] | None = None  # lowercase hex; None accepts any MRTD
    rtmrs: dict[str, frozenset[str]] = {}  # "rtmr0".."rtmr3" -> accepted lowercase hex values
    tcb_statuses: frozenset[str] = DEFAULT_TCB_STATUSES  # judged for tdx only: fake and none have no TCB
    # Lowercase hex SHA-256s of the configurations peers may run with (their claims' config_hash); None: any.
    config_hashes: frozenset[str] | None = None
    # Engines outside the measured image (an `openai:` engine off the worker's machine see every prompt in the
    # clear): "any"; "registry": only for the models the root registry lists with that origin; "refuse".
    remote_engines: RemoteEngines = "any"
    # The weights a worker serves (its claims' model_hash, inference/weights.py): "any"; "registry": only a hash the
    # root registry lists for every model the worker announces (a worker stating none is refused).
    model_hashes: ModelHashes = "any"
    max_cert_age_s: float = 86400 * 2
    max_skew_s: float = 300

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown attestation kinds {unknown}; expected some of {list(KINDS)}")
        if self.image_hashes != "registry":
            for h in self.image_hashes or ():
                image_hash_hex(h)
        for h in self.config_hashes or ():
            if not _HEX_SHA256.fullmatch(h):
                raise ValueError(f"config hash {h!r} is not 64 lowercase hex characters (a SHA-256)")
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
    # Refuse proxies and workers whose own policy would admit a proxy or worker this one refuses (`weakness`):
    # prompts pass through them to whomever they admit.
    refuse_weaker_peers: bool = False

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
        if self.production_safe and not self.refuse_weaker_peers:
            raise ValueError("a production_safe policy must refuse weaker peers (refuse_weaker_peers = true)")

    @property
    def needs_registry(self) -> bool:
        return any(rules.image_hashes == "registry" or rules.remote_engines == "registry"
                   or rules.model_hashes == "registry" for rules in self.roles.values())

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

    def check_quote(self, role: str, verified: VerifiedQuote, registry: RegistryView | None = None) -> None:
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


    def check_configuration(self, role: str, *, config_hash: bytes, engine_origin: str, peer_policy: Policy | None,
                            registry: RegistryView | None = None) -> None:
        """Refuses a peer (already attested) whose claimed configuration this policy does not accept: a config hash
        not pinned, an engine outside its image where remote engines are refused, or its own policy being weaker.

        Engines the registry must allow per model are judged once the models are known (`check_engine_models`)."""
        rules = self.rules_for(role)
        if rules.config_hashes is not None and config_hash.hex() not in rules.config_hashes:
            raise AttestationError(f"configuration hash {config_hash.hex() or '(none claimed)'} is not allowed for "
                                   f"role {role!r} by policy {self.name!r}")
        if rules.remote_engines == "refuse" and runs_outside(engine_origin):
            raise AttestationError(f"engine at {engine_origin} runs outside the measured image: refused for role "
                                   f"{role!r} by policy {self.name!r}")
        if self.refuse_weaker_peers and role in REGISTRY_ROLES:
            if peer_policy is None:
                raise AttestationError(f"the peer states no policy of its own; policy {self.name!r} refuses "
                                       f"{_PLURAL[role]} whose policy is weaker")
            reason = self.weakness(peer_policy, registry)
            if reason is not None:
                raise AttestationError(f"the {role}'s policy {peer_policy.name!r} is weaker than {self.name!r}: "
                                       f"{reason}")

    def check_engine_models(self, role: str, engine_origin: str, models: Iterable[str],
                            registry: RegistryView | None, *, model_hash: bytes = b"") -> None:
        """Refuses a peer that serves `models` from an engine at `engine_origin` outside its image, unless this
        policy allows remote engines for the role, or the root registry lists that origin for every model; and,
        where the policy takes model hashes from the registry, one whose weights (`model_hash`, from its claims)
        the registry does not list for every model it serves."""
        rules = self.rules_for(role)
        models = sorted(set(models))
        if rules.model_hashes == "registry":
            self._check_model_hash(role, model_hash, models, registry)
        if not runs_outside(engine_origin) or rules.remote_engines == "any":
            return
        if rules.remote_engines == "refuse":
            raise AttestationError(f"engine at {engine_origin} runs outside the measured image: refused for role "
                                   f"{role!r} by policy {self.name!r}")
        if registry is None:
            raise AttestationError(f"policy {self.name!r} takes the remote engines of role {role!r} from the root "
                                   "registry, but no registry is connected")
        refused = sorted(m for m in set(models) if not registry.allows_engine(m, engine_origin))
        if refused:
            raise AttestationError(
                f"engine at {engine_origin} runs outside the measured image, and the root registry (version "
                f"{registry.version}) does not list it for model(s) {refused}: refused for role {role!r} by policy "
                f"{self.name!r}")

    def _check_model_hash(self, role: str, model_hash: bytes, models: list[str],
                          registry: RegistryView | None) -> None:
        if not model_hash:
            raise AttestationError(f"the {role} states no model hash; policy {self.name!r} serves only weights the "
                                   "root registry lists")
        if registry is None:
            raise AttestationError(f"policy {self.name!r} takes the model hashes of role {role!r} from the root "
                                   "registry, but no registry is connected")
        refused = [m for m in models if not registry.allows_model(m, model_hash.hex())]
        if refused:
            raise AttestationError(
                f"model hash {model_hash.hex()} is not listed in the root registry (version {registry.version}) "
                f"for model(s) {refused}: refused for role {role!r} by policy {self.name!r}")

    def weakness(self, peer: Policy, registry: RegistryView | None) -> str | None:
        """Why `peer` (another node's own policy) would admit a proxy or worker that this policy refuses; None
        when it admits none.

        Compared: the rules for proxies and workers (who handle others' prompts) that this policy has, rule by
        rule (kinds, images, MRTD and RTMRs, TCB statuses, configurations, remote engines), and whether the peer
        refuses weaker peers in turn. Where equality cannot be shown (an image list against a registry not
        connected here), the peer counts as weaker. Certificate age and clock skew tolerances are not compared."""
        if self.refuse_weaker_peers and not peer.refuse_weaker_peers:
            return "it does not refuse weaker peers"
        for role in REGISTRY_ROLES:
            mine, theirs = self.roles.get(role), peer.roles.get(role)
            if mine is None or theirs is None:  # we meet no such peers, or it admits none
                continue
            reason = _admits_more(theirs, mine, role, registry)
            if reason is not None:
                return f"for {_PLURAL[role]} it {reason}"
        return None


def _admits_more(theirs: RolePolicy, mine: RolePolicy, role: str, registry: RegistryView | None) -> str | None:
    """What `theirs` admits that `mine` refuses (for peers of `role`), or None."""
    extra = sorted(theirs.kinds - mine.kinds)
    if extra:
        return f"admits kinds {extra}"
    if not _images_within(theirs.image_hashes, mine.image_hashes, role, registry):
        return "admits images this policy refuses"
    if mine.mrtds is not None and (theirs.mrtds is None or not theirs.mrtds <= mine.mrtds):
        return "admits MRTDs this policy refuses"
    for name, accepted in sorted(mine.rtmrs.items()):
        values = theirs.rtmrs.get(name)
        if values is None or not values <= accepted:
            return f"admits {name.upper()} values this policy refuses"
    if "tdx" in theirs.kinds and not theirs.tcb_statuses <= mine.tcb_statuses:
        return f"admits TCB statuses {sorted(theirs.tcb_statuses - mine.tcb_statuses)}"
    if mine.config_hashes is not None and (theirs.config_hashes is None
                                           or not theirs.config_hashes <= mine.config_hashes):
        return "admits configurations this policy refuses"
    if _ENGINE_STRICTNESS[theirs.remote_engines] < _ENGINE_STRICTNESS[mine.remote_engines]:
        return f"admits remote engines {theirs.remote_engines!r} (this policy: {mine.remote_engines!r})"
    if mine.model_hashes == "registry" and theirs.model_hashes != "registry":
        return "admits model hashes the root registry does not list"
    return None


def _images_within(theirs: frozenset[str] | Literal["registry"] | None,
                   mine: frozenset[str] | Literal["registry"] | None, role: str, registry: RegistryView | None) -> bool:
    if mine is None or theirs == mine:
        return True
    if theirs is None:
        return False

    def resolve(images: frozenset[str] | Literal["registry"]) -> frozenset[str] | None:
        if images != "registry":
            return images
        return registry.allowed_images(role) if registry is not None else None

    theirs_now, mine_now = resolve(theirs), resolve(mine)
    return theirs_now is not None and mine_now is not None and theirs_now <= mine_now


def _check_production_safe(role: str, rules: RolePolicy) -> None:
    # Fake quotes are forgeable by anyone and only clients (outside any TEE, known by their key) may go
    # unattested; and since a TD can run any code, the TEE roles need a restricted image as well.
    if "fake" in rules.kinds or ("none" in rules.kinds and role != "client"):
        raise ValueError(f"a production_safe policy cannot allow kinds {sorted(rules.kinds)} for role {role!r}")
    if role != "client" and rules.image_hashes is None:
        raise ValueError(f"a production_safe policy must restrict the image hashes of role {role!r}")
    if role == "worker" and rules.remote_engines == "any":
        raise ValueError("a production_safe policy must restrict the remote engines of workers "
                         '(remote_engines = "registry" or "refuse")')


_TDX = frozenset({"tdx"})
# Clients run on ordinary app servers and pay for what they use: their key is what identifies them.
_CLIENTS = RolePolicy(kinds=frozenset({"none", "tdx"}))

DEV_POLICY = Policy(
    name="dev",
    roles={
        "proxy": RolePolicy(kinds=frozenset({"fake", "tdx"})),
        "worker": RolePolicy(kinds=frozenset({"fake", "tdx"})),
        "client": RolePolicy(kinds=frozenset({"none", "fake", "tdx"})),
        "keys": RolePolicy(kinds=frozenset({"fake", "tdx"})),
    },
    production_safe=False,
)
TDX_ANY_POLICY = Policy(
    name="tdx-any",
    roles={"proxy": RolePolicy(kinds=_TDX), "worker": RolePolicy(kinds=_TDX), "client": _CLIENTS,
           "keys": RolePolicy(kinds=_TDX)},
    production_safe=False,  # real TDs, but running any code at all
)
PRODUCTION_POLICY = Policy(
    name="production",
    roles={
        "proxy": RolePolicy(kinds=_TDX, image_hashes="registry"),
        "worker": RolePolicy(kinds=_TDX, image_hashes="registry", remote_engines="registry",
                             model_hashes="registry"),
        "client": _CLIENTS,
    },
    production_safe=True,
    refuse_weaker_peers=True,
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
