"""The proxy's registry of worker links: the index that finds a sealed request's candidates by key id."""

from __future__ import annotations

from typing import Any

from cocoon.proxy.registry import WorkerLink, WorkerRegistry
from cocoon.wire.messages import WorkerParams


def link(name: str, seal_key_id: bytes) -> WorkerLink:
    conn: Any = None  # never used by the registry's index
    return WorkerLink(conn=conn, params=WorkerParams(models=["m"], coefficient=1000, max_active_requests=1),
                      key=f"key-{name}", name=name, seal_key_id=seal_key_id)


def test_holders_of_key_ids_follow_links_coming_and_going() -> None:
    reg = WorkerRegistry()
    a, b, c, keyless = link("a", b"ka"), link("b", b"kb"), link("c", b"kc"), link("none", b"")
    again = link("a-again", b"ka")  # a worker's new link before its old one is gone: the same key twice
    for lk in (a, b, c, keyless, again):
        reg.add(lk)
    assert reg.holding([b"kb", b"unknown"]) == (b,)
    assert set(reg.holding([b"ka", b"kc"])) == {a, again, c}
    assert reg.holding([b""]) == ()  # a worker with no key to seal to is nobody's candidate
    reg.remove(a)
    reg.remove(a)  # twice: harmless
    assert reg.holding([b"ka"]) == (again,)
    reg.remove(again)
    assert reg.holding([b"ka"]) == () and len(reg) == 3
