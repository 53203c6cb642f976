"""RA-TLS handshake cost with attestation verification, cold and cached, and DCAP verification cost.

    .venv/bin/python bench/ratls_handshake.py [--handshakes N] [--verifications N]

Handshakes: mutual RA-TLS 1.3 on 127.0.0.1 with `fake` attestation (no TDX here), complete when the client
has read one byte the server sent after verifying the client. "cold": both sides verify the peer's
certificate from scratch every time (no verdict cache); "cached": both reuse their verdict caches.
DCAP: dcap-qvl verification of the real sample TDX quote with its collateral already in memory, as
`TdxVerifier` does it on a cache hit; the TDX handshake estimate adds two of those (one per side) to the
cold fake handshake, since a TDX peer's certificate differs from a fake one only in the quote.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from cocoon.attest.collateral import Collateral, FixedCollateral
from cocoon.attest.fake import FakeBackend
from cocoon.attest.policy import DEV_POLICY
from cocoon.attest.tdx import TdxVerifier, parse_tdx_quote
from cocoon.ratls import tls
from cocoon.ratls.cert import CertVerifier, Identity, make_identity

TESTDATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "testdata"
INSIDE_WINDOW = 1751710563  # the sample collateral is valid then (testdata/README.md)


async def handshakes(n: int, server_id: Identity, client_id: Identity, *, cached: bool) -> float:
    """Seconds for `n` sequential mutual handshakes (each with one byte of application data)."""
    cache_size = 4096 if cached else 0  # a cache of size 0 keeps no verdict: every check runs in full

    async def handler(stream: tls.TlsStream) -> None:
        stream.write(b"k")
        await stream.drain()

    server = await tls.serve(handler, "127.0.0.1", 0, server_id,
                             CertVerifier(DEV_POLICY, {"worker"}, cache_size=cache_size))
    port = server.sockets[0].getsockname()[1]
    client_verifier = CertVerifier(DEV_POLICY, {"proxy"}, cache_size=cache_size)
    try:
        if cached:  # warm both caches
            stream = await tls.connect("127.0.0.1", port, client_id, client_verifier)
            await stream.read()
            await stream.close()
        start = time.perf_counter()
        for _ in range(n):
            stream = await tls.connect("127.0.0.1", port, client_id, client_verifier)
            if await stream.read() != b"k":
                raise RuntimeError("the server refused the benchmark client")
            await stream.close()
        return time.perf_counter() - start
    finally:
        server.close()
        await server.wait_closed()


def per_call_s(n: int, fn: Callable[[], object]) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=500)
    parser.add_argument("--verifications", type=int, default=500)
    args = parser.parse_args()

    server_id = make_identity("proxy", FakeBackend("bench-proxy"))
    client_id = make_identity("worker", FakeBackend("bench-worker"))
    cold = asyncio.run(handshakes(args.handshakes, server_id, client_id, cached=False)) / args.handshakes
    cached = asyncio.run(handshakes(args.handshakes, server_id, client_id, cached=True)) / args.handshakes

    der = client_id.cert_der
    no_cache, warm = CertVerifier(DEV_POLICY, {"worker"}, cache_size=0), CertVerifier(DEV_POLICY, {"worker"})
    cert_cold = per_call_s(args.verifications, lambda: no_cache.verify(der))
    cert_cached = per_call_s(args.verifications, lambda: warm.verify(der))

    print(f"RA-TLS handshake, fake attestation, {args.handshakes} sequential handshakes on 127.0.0.1:")
    print(f"  cold   {cold * 1e3:8.3f} ms/handshake  {1 / cold:8.0f} handshakes/s")
    print(f"  cached {cached * 1e3:8.3f} ms/handshake  {1 / cached:8.0f} handshakes/s")
    print(f"  cold/cached ratio {cold / cached:.2f}")
    print("certificate verification alone (CertVerifier.verify, fake quote):")
    print(f"  cold   {cert_cold * 1e6:8.1f} us   cached {cert_cached * 1e6:8.1f} us   "
          f"ratio {cert_cold / cert_cached:.0f}")

    quote_path, collateral_path = TESTDATA / "dcap_sample_tdx_quote.dat", TESTDATA / "dcap_sample_collateral.json"
    if not quote_path.exists():
        print(f"DCAP: skipped, no test data at {TESTDATA}")
        return
    quote = quote_path.read_bytes()
    verifier = TdxVerifier(FixedCollateral(Collateral.from_json(collateral_path.read_text())))
    dcap = per_call_s(args.verifications, lambda: verifier.verify(quote, INSIDE_WINDOW))
    parse = per_call_s(args.verifications, lambda: parse_tdx_quote(quote))
    print(f"dcap-qvl TDX quote verification, collateral cached ({args.verifications} runs):")
    print(f"  verify {dcap * 1e3:8.3f} ms   (parse only {parse * 1e3:.3f} ms)")
    print(f"  verify / cached handshake {dcap / cached:.2f}   verify / cold fake cert check {dcap / cert_cold:.1f}")
    tdx_cold = cold + 2 * dcap
    print(f"  estimated cold TDX handshake {tdx_cold * 1e3:.3f} ms ({1 / tdx_cold:.0f}/s), "
          f"{tdx_cold / cached:.1f}x a cached one")


if __name__ == "__main__":
    main()
