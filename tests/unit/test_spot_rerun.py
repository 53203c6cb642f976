"""Where a spot check's re-run goes (proxy/rerun.py), through the proxy's own request path with its workers' links
replaced by scripted fakes (tests/unit/test_forwarding.py): never to a worker the request was sent to (a sealed
request is opened at most once per worker, so one that had it would refuse it), only to a worker a sealed request was
sealed to, and paid to its worker as the proxy's cost."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from types import SimpleNamespace

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cocoon.config import SpotCheckConfig
from cocoon.core.errors import ErrorCode
from cocoon.proxy.billing import Account
from cocoon.proxy.forwarding import ClientLink
from cocoon.proxy.rerun import SpotChecker
from cocoon.proxy.spotcheck import Sample
from cocoon.seal import key_id, seal_request
from cocoon.wire.messages import Request, ResponseEnd
from tests.unit import test_forwarding
from tests.unit.test_forwarding import CLIENT_CALL, MODEL, FakeClientConn, Proxy, answer, error

make_proxy = test_forwarding.make_proxy  # the fixture


def checked(proxy: Proxy) -> SpotChecker:
    """The proxy with spot checks of every deterministic request; its fake links give an image hash (none)."""
    checker = SpotChecker(SpotCheckConfig(share=1.0), proxy.fwd.registry, proxy.fwd.selector, proxy.fwd.backlog,
                          proxy.fwd.billing)
    proxy.fwd.spot_checks = checker
    for worker in proxy.workers:
        worker.conn.stream = SimpleNamespace(peer=worker.conn.peer)  # type: ignore[attr-defined]
    return checker


async def over(checker: SpotChecker) -> None:
    for _ in range(200):  # bounded: the fakes answer at once
        if not checker._tasks:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the spot check did not end")


async def serve_deterministic(proxy: Proxy, checker: SpotChecker) -> None:
    link = ClientLink(conn=FakeClientConn(), key="c1" * 32, account=Account("c1" * 32))  # type: ignore[arg-type]
    req = Request(endpoint="chat", model=MODEL, body=b'{"model": "m", "messages": [], "temperature": 0}',
                  stream=False, include_usage=True, deadline=time.time() + 30, request_id="r-1", call_id=CLIENT_CALL)
    await asyncio.wait_for(proxy.fwd.serve(link, req), 10)
    await over(checker)


async def test_a_rerun_never_goes_to_a_worker_the_request_was_sent_to(make_proxy: Callable[..., Proxy]) -> None:
    # the first worker asked fails before its first token, the second answers, the check runs on the third
    proxy = make_proxy(workers=3, plan=[error(502, ErrorCode.ENGINE_ERROR), answer(), answer()])
    checker = checked(proxy)
    await serve_deterministic(proxy, checker)
    failed, served, rerun = proxy.asked()
    assert len({failed.name, served.name, rerun.name}) == 3
    assert checker.counts["passed"] == 1 and checker.runs == 1
    # paid as the proxy's cost: a row of its own in the books, no client charged for it
    books = proxy.billing.summary()
    assert books["checks_nanoton"] == checker.cost_nanoton > 0
    assert books["clients"]["c1" * 32]["requests"] == 1


async def test_with_every_other_worker_tried_the_check_is_skipped(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(workers=2, plan=[error(502, ErrorCode.ENGINE_ERROR), answer(), answer()])
    checker = checked(proxy)
    await serve_deterministic(proxy, checker)
    assert len(proxy.asked()) == 2 and len(set(proxy.asked())) == 2  # never back to the one that failed it
    assert checker.counts["skipped"] == 1 and checker.runs == 0


async def test_a_sealed_rerun_goes_only_to_another_worker_it_was_sealed_to(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(workers=4, plan=[answer()])
    checker = checked(proxy)
    keys = [X25519PrivateKey.generate().public_key().public_bytes_raw() for _ in proxy.workers]
    for worker, public in zip(proxy.workers, keys, strict=True):
        proxy.fwd.registry.remove(worker)  # the registry indexes a link's seal key id as it joins: join again
        worker.seal_key_id = key_id(public)
        proxy.fwd.registry.add(worker)
    first, second, third, outsider = proxy.workers
    req = Request(endpoint="chat", model=MODEL, body=b"", stream=False, include_usage=True,
                  deadline=time.time() + 30, request_id="r-2", sealed=True, deterministic=True)
    body = json.dumps({"model": MODEL, "messages": [], "temperature": 0}).encode()
    sealed = Request(**{**{f: getattr(req, f) for f in req.__struct_fields__},
                        "body": seal_request(body, keys[:3], req.envelope()).sealed})
    sample = Sample(sealed, tried={first.key, second.key})  # sent to the first two (one failed, one answered)
    ran = await checker._run_elsewhere(sample, None, frozenset(sample.tried))
    # the only worker left that can open it is the third: the request went there, as it came, and nowhere else
    assert proxy.asked() == [third] and third.conn.requests == [sealed]  # type: ignore[attr-defined]
    assert ran is None  # the fake's answer carries no receipt over the sealed answer: not a run, and not paid
    assert checker.runs == 0 and proxy.billing.summary()["checks_nanoton"] == 0
    # with the third tried too, no candidate is left: nothing is sent (the outsider cannot open it)
    assert await checker._run_elsewhere(sample, None, frozenset({first.key, second.key, third.key})) is None
    assert proxy.asked() == [third] and outsider.conn.requests == []  # type: ignore[attr-defined]
    assert not any(isinstance(m, ResponseEnd) for m in outsider.conn.sent)  # type: ignore[attr-defined]
