"""What `make mutate` mutates: the money and trust code (issue 15, "Tests strong enough to catch a wrong line")."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str  # what the report and the command line call it
    module: str  # dotted name, under src/
    include: tuple[str, ...] | None = None  # only these classes and functions (qualified names); None: all of it

    def path(self, src: str) -> str:
        return f"{src}/{self.module.replace('.', '/')}.py"


TARGETS = (
    Target("pricing", "cocoon.ledger.pricing"),
    Target("policy", "cocoon.attest.policy"),
    Target("trustconfig", "cocoon.attest.trustconfig"),
    # certificate verification: what judges a peer's certificate, not what builds our own
    Target("cert", "cocoon.ratls.cert",
           ("Claims.__post_init__", "CertVerifier", "read_ratls_extensions", "decode_claims")),
    Target("check", "cocoon.ratls.check"),
    Target("books", "cocoon.ledger.books"),
    Target("vouchers", "cocoon.ledger.vouchers"),
    Target("purse", "cocoon.ledger.purse"),
    Target("client-payments", "cocoon.client.payments"),
    Target("client-audit", "cocoon.client.audit"),  # the client's over-charge check, out of its purse
    Target("worker-payments", "cocoon.worker.payments"),
    Target("billing", "cocoon.proxy.billing"),
)


def parse_target(spec: str) -> Target:
    """NAME=dotted.module[:Qual.name,...] (for running the runner on other code, e.g. its own tests)."""
    name, _, rest = spec.partition("=")
    module, _, include = rest.partition(":")
    if not name or not module:
        raise ValueError(f"target {spec!r}: expected NAME=dotted.module[:Qualified.name,...]")
    return Target(name, module, tuple(include.split(",")) if include else None)
