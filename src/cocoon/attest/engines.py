"""Where a worker's engine runs, as its claims and peers' policies name it.

An engine in the measured image (`embedded`, `fake`) or an `openai:` engine on this machine's loopback sees
prompts only inside the TEE. An `openai:` engine anywhere else receives every prompt from the worker in the
clear, whatever the image: its origin (`scheme://host:port`) is what a policy judges.
"""

from __future__ import annotations

import ipaddress
import urllib.parse

_DEFAULT_PORTS = {"http": 80, "https": 443}


def engine_site(spec: str) -> tuple[str, str]:
    """(kind, origin) of an engine as configured (`embedded`, `fake`, `openai:URL`); the origin is "" for an
    engine running in the worker's own process. ValueError for an unknown kind or a malformed URL."""
    if spec in ("embedded", "fake"):
        return spec, ""
    if spec.startswith("openai:"):
        return "openai", origin_of(spec.removeprefix("openai:"))
    raise ValueError(f"unknown engine {spec!r}; expected embedded, fake or openai:URL")


def origin_of(url: str) -> str:
    """`scheme://host:port` of an http(s) URL, lowercase, the port always written: one spelling per place an
    engine can run (credentials, path and query say nothing about where prompts go)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"engine URL {url!r} is malformed: {e}") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        raise ValueError(f"engine URL {url!r} must be http:// or https:// with a host")
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port or _DEFAULT_PORTS[scheme]}"


def runs_outside(origin: str) -> bool:
    """Whether an engine at `origin` runs outside the worker's TEE: anything but in-process or loopback.

    Host names other than `localhost` count as outside: whoever runs the machine decides what they resolve to."""
    if not origin:
        return False
    host = urllib.parse.urlsplit(origin).hostname or ""
    if host == "localhost":
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_loopback
