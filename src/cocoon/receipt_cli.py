"""`cocoon receipt verify`: does a receipt hold for this request and this answer, and was its worker attested?

Checked, in order: the worker's signature and the proxy's countersignature (ledger/receipts.py); the request hash
against the request body (as sent to the client API, re-encoded the way the client API forwards it); the answer
hash against the answer body exactly as received (a non-streamed answer's JSON, or a stream's SSE text) and, when
the receipt states one (a request sent marked deterministic), its content digest against what that answer says; then,
given the worker's certificate (`--cert`), that it passes the policy as of the receipt's time and names the
receipt's key, image and weights; given the root registry (`--ledger`), that the countersigning key is a
registered proxy's and that the registry lists the receipt's image and, when it lists weights for that model, its
model hash. One line and exit 0 when everything holds; `refused: <reason>` and exit 1 otherwise.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from cocoon.attest.types import AttestationError
from cocoon.core.errors import DECODE_ERRORS, ApiError, CocoonError
from cocoon.ledger.base import RootParams
from cocoon.ledger.receipts import Receipt, ReceiptError, answer_digest, request_digest
from cocoon.openai import schema, sse
from cocoon.openai.content import content_digest

app = typer.Typer(help="Answers' receipts: check what a worker signed and a proxy charged.", no_args_is_help=True)

InFile = Annotated[Path, typer.Option(exists=True, dir_okay=False, readable=True)]


def answer_payloads(body: bytes) -> list[bytes]:
    """The payloads of an answer as the client API delivered it: an SSE stream's events (without `[DONE]`), or the
    one JSON body of a non-streamed answer."""
    return sse.payloads(body) if sse.looks_like_stream(body) else [body]


def receipt_in_stream(payloads: list[bytes]) -> str | None:
    """The receipt a stream carries in its final usage chunk (`usage.receipt`), if any."""
    for payload in reversed(payloads):
        try:
            doc = msgspec.json.decode(payload)
        except DECODE_ERRORS:
            continue
        usage = doc.get("usage") if isinstance(doc, dict) else None
        if isinstance(usage, dict) and isinstance(usage.get("receipt"), str):
            return usage["receipt"]
    return None


def forwarded_request_hash(endpoint: str, body: bytes) -> bytes:
    """The hash of `body` as the client API forwards it (decoded and re-encoded compactly)."""
    return request_digest(schema.forwarded_body(schema.decode_request(endpoint or "chat", body)))


def check_hashes(receipt: Receipt, request: bytes, payloads: list[bytes]) -> None:
    if receipt.request_hash not in (request_digest(request), _forwarded_or_none(receipt.endpoint, request)):
        raise ReceiptError("the request hash does not match this request body: the receipt is for another request")
    if receipt.answer_hash != answer_digest(payloads):
        raise ReceiptError("the answer hash does not match this answer: the answer was altered, or the receipt is "
                           "for another answer")
    if receipt.content_digest and receipt.content_digest != content_digest(payloads):
        raise ReceiptError("the content digest does not match what this answer says: the worker signed another "
                           "answer's content than the one it served")


def _forwarded_or_none(endpoint: str, body: bytes) -> bytes | None:
    try:
        return forwarded_request_hash(endpoint, body)
    except ApiError:
        return None


def check_certificate(receipt: Receipt, cert: bytes, policy: str) -> str:
    """The worker's certificate passes `policy` as of the receipt's time and names the receipt's key, image and
    weights; a short description of it."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from cocoon.attest.collateral import CollateralCache
    from cocoon.attest.inspect import load_certificate
    from cocoon.attest.policy import load_policy
    from cocoon.ratls.cert import CertVerifier

    loaded = load_certificate(cert)
    if loaded is None:
        raise ReceiptError("--cert is not a certificate (PEM or DER)")
    rules = load_policy(policy)
    if rules.needs_registry:
        raise ReceiptError(f"policy {rules.name!r} reads the root registry: check the certificate with "
                           "`cocoon attest verify --ledger`, and the receipt with --ledger")
    verifier = CertVerifier(rules, {"worker"}, collateral=CollateralCache(None, None, block=True))
    peer = verifier.verify(loaded.public_bytes(Encoding.DER), now=float(receipt.issued_at))
    if peer.public_key != receipt.worker_key:
        raise ReceiptError(f"the receipt is signed by key {receipt.worker_key.hex()[:16]}…, not by the attested key "
                           f"{peer.public_key.hex()[:16]}… of this certificate: an unattested key")
    if (peer.image_hash or b"") != receipt.image_hash:
        raise ReceiptError("the receipt names another image than the certificate's quote")
    if peer.model_hash != receipt.model_hash:
        raise ReceiptError("the receipt names other weights than the certificate's claims")
    return f"certificate accepted by policy {rules.name!r} ({peer.kind})"


def check_registry(receipt: Receipt, params: RootParams, proxy_keys: set[bytes]) -> str:
    counter = receipt.verify_proxy()
    if counter.proxy_key not in proxy_keys:
        raise ReceiptError("the receipt is countersigned by a key no proxy in the root registry has")
    if receipt.image_hash.hex() not in params.worker_image_hashes:
        raise ReceiptError(f"the worker's image {receipt.image_hash.hex() or '(none)'} is not in the root registry "
                           f"(version {params.version})")
    if receipt.model_hash and not params.allows_model(receipt.model, receipt.model_hash.hex()):
        raise ReceiptError(f"the root registry (version {params.version}) does not list model hash "
                           f"{receipt.model_hash.hex()} for {receipt.model}")
    return f"registered proxy and worker image (registry version {params.version})"


def _registry(ledger: Path) -> tuple[RootParams, set[bytes]]:
    from cocoon.ledger.local import LocalLedger
    from cocoon.ledger_cli import Chain

    # a network's state dir: its chain over the devnet's API (or its local chain file); else a ledger file
    opened = Chain(ledger).ledger if ledger.is_dir() else LocalLedger(ledger)
    try:
        return opened.refresh(), {entry.pubkey for entry in opened.proxies()}
    finally:
        opened.close()


def describe(receipt: Receipt) -> str:
    counter = receipt.countersignature
    charged = "uncharged"
    if counter is not None:
        voucher = f" (voucher {counter.voucher_hash.hex()[:16]}…)" if counter.voucher_hash else ""
        charged = f"charged {counter.cost_nanoton} nanoTON{voucher}"
    model = receipt.model + (f" {receipt.model_hash.hex()[:16]}…" + (" (declared)" if receipt.model_hash_declared
                                                                     else "") if receipt.model_hash else "")
    u = receipt.usage
    return (f"request {receipt.request_id}: {model}, {u.prompt_tokens}+{u.completion_tokens} tokens, {charged}, "
            f"worker {receipt.worker_key.hex()[:16]}…")


@app.command("verify")
def verify(
    request: Annotated[Path, typer.Option(exists=True, dir_okay=False, readable=True,
                                          help="The request body as sent to the client API (JSON).")],
    response: Annotated[Path, typer.Option(exists=True, dir_okay=False, readable=True, help=(
        "The answer body exactly as received: the JSON of a non-streamed answer, or the SSE text of a stream."))],
    receipt: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help=(
        "The receipt (base64, as the x-cocoon-receipt header carries it). Default: the one in the stream's "
        "final usage chunk."))] = None,
    cert: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help=(
        "The worker's RA-TLS certificate (PEM or DER): check its attestation and that it signed the receipt."))
    ] = None,
    policy: Annotated[str, typer.Option(help="Policy judging --cert: dev, tdx-any, or a TOML policy file.")
                      ] = "tdx-any",
    ledger: Annotated[Path | None, typer.Option(exists=True, readable=True, help=(
        "The root registry: a network's state dir (its chain, over the devnet's API) or a local ledger file; check "
        "the countersigning proxy, the worker's image and model hash against it."))] = None,
) -> None:
    """Check a receipt against its request and answer: one line and exit 0 if it holds; the reason and exit 1."""
    try:
        line = _verify(request.read_bytes(), response.read_bytes(),
                       receipt.read_bytes() if receipt is not None else None,
                       cert.read_bytes() if cert is not None else None, policy, ledger)
    except (CocoonError, AttestationError, OSError, ValueError, sqlite3.Error, *DECODE_ERRORS) as exc:
        typer.echo(f"refused: {_reason(exc)}")
        raise typer.Exit(1) from None
    typer.echo(line)


def _verify(request: bytes, response: bytes, receipt_text: bytes | None, cert: bytes | None, policy: str,
            ledger: Path | None) -> str:
    payloads = answer_payloads(response)
    if receipt_text is None:
        found = receipt_in_stream(payloads)
        if found is None:
            raise ReceiptError("no --receipt given, and the response carries none (a non-streamed answer has it in "
                               "the x-cocoon-receipt header; a stream, in its final usage chunk when "
                               "stream_options.include_usage is set)")
        receipt_text = found.encode()
    receipt = Receipt.from_base64(receipt_text)
    receipt.verify()
    check_hashes(receipt, request, payloads)
    checks: list[str] = []
    if cert is not None:
        checks.append(check_certificate(receipt, cert, policy))
    if ledger is not None:
        checks.append(check_registry(receipt, *_registry(ledger)))
    attestation = "; ".join(checks) if checks else "worker attestation not checked (give --cert or --ledger)"
    issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(receipt.issued_at))
    return f"receipt holds: {describe(receipt)}, issued {issued}; {attestation}"


def _reason(exc: BaseException) -> Any:
    return exc.message if isinstance(exc, ApiError) else str(exc) or type(exc).__name__
