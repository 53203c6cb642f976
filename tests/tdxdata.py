"""The TDX test data (tests/data/tdx, a copy of the project's shared testdata; see its README) and a PCCS double
that serves it."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dcap_qvl

TESTDATA = Path(__file__).resolve().parent / "data" / "tdx"  # in the repo: a clean clone needs nothing beside it
REAL_QUOTE = TESTDATA / "tdx_quote.dat"  # parses; no collateral
SAMPLE_QUOTE = TESTDATA / "dcap_sample_tdx_quote.dat"
SAMPLE_COLLATERAL = TESTDATA / "dcap_sample_collateral.json"
INSIDE_WINDOW = 1751710563  # 2025-07-05, inside the sample collateral's validity
SAMPLE_FMSPC = "B0C06F000000"
SIGNED_LEN = 48 + 584  # quote header + TD report 1.0: what the attestation key signs


def quote_with_fmspc(raw: bytes, fmspc: str) -> bytes:
    """`raw` with another platform's FMSPC (12 hex digits) in its PCK certificate, the same length: what a
    peer crafting quotes sends (parsing reads the FMSPC; only verification would notice the broken signature)."""
    match = re.search(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", raw, re.S)
    assert match is not None, "the quote carries no PEM certificate chain"
    body = match.group(1)
    der = base64.b64decode(b"".join(body.split()))
    current = bytes.fromhex(dcap_qvl.parse_quote(raw).fmspc())
    assert der.count(current) == 1
    flat = iter(base64.b64encode(der.replace(current, bytes.fromhex(fmspc))))
    # the same line breaks, so every length field of the quote stays right
    rebuilt = bytes(c if chr(c).isspace() else next(flat) for c in body)
    return raw[:match.start(1)] + rebuilt + raw[match.end(1):]


@contextlib.contextmanager
def fake_pccs(collateral: dict[str, str] | None = None, *, hold: threading.Event | None = None
              ) -> Iterator[tuple[str, list[str]]]:
    """A PCCS on 127.0.0.1 answering the v4 API from a dcap-qvl collateral JSON; yields (url, request log).

    It runs in its own thread. With `hold`, every request waits until it is set (a PCCS that hangs); it is set
    on exit, so that no request outlives the context.
    """
    data = collateral or json.loads(SAMPLE_COLLATERAL.read_text())
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            if hold is not None:
                hold.wait(60)
            path = urllib.parse.urlsplit(self.path).path
            quote = urllib.parse.quote
            if path.endswith("/pckcrl"):
                self._send(bytes.fromhex(data["pck_crl"]),
                           {"SGX-PCK-CRL-Issuer-Chain": quote(data["pck_crl_issuer_chain"])})
            elif path.endswith("/rootcacrl"):
                self._send(data["root_ca_crl"].encode(), {})
            elif path.endswith("/tcb"):
                body = f'{{"tcbInfo":{data["tcb_info"]},"signature":"{data["tcb_info_signature"]}"}}'
                self._send(body.encode(), {"TCB-Info-Issuer-Chain": quote(data["tcb_info_issuer_chain"])})
            elif path.endswith("/qe/identity"):
                body = f'{{"enclaveIdentity":{data["qe_identity"]},"signature":"{data["qe_identity_signature"]}"}}'
                self._send(body.encode(),
                           {"SGX-Enclave-Identity-Issuer-Chain": quote(data["qe_identity_issuer_chain"])})
            else:
                self.send_error(404)

        def _send(self, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(ConnectionError):  # a fetch that timed out (a held PCCS) hung up already
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        if hold is not None:
            hold.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
