"""`cocoon attest show|verify` and `cocoon gen-cert`, through the real typer app."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from cocoon.attest.fake import fake_image_hash
from cocoon.attest.tdx import parse_tdx_quote
from cocoon.attest.tsm import TSM_REPORT_ROOT
from cocoon.cli import app
from cocoon.ledger.local import LocalLedger
from tests.tdxdata import INSIDE_WINDOW, REAL_QUOTE, SAMPLE_COLLATERAL, SAMPLE_QUOTE

runner = CliRunner()
HEX = set("0123456789abcdef")


def cocoon(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def verify_sample(*extra: str | Path) -> tuple[int, str]:
    return cocoon("attest", "verify", SAMPLE_QUOTE, "--collateral", SAMPLE_COLLATERAL, *extra)


@pytest.mark.parametrize("command", [[], ["attest"], ["attest", "show"], ["attest", "verify"],
                                     ["attest", "config-hash"], ["gen-cert"]])
def test_every_command_has_help(command: list[str]) -> None:
    code, out = cocoon(*command, "--help")
    assert code == 0
    assert "Usage" in out


def test_show_tdx_quote_as_json() -> None:
    code, out = cocoon("attest", "show", REAL_QUOTE, "--json")
    assert code == 0
    info = json.loads(out)
    m = parse_tdx_quote(REAL_QUOTE.read_bytes()).measurements
    assert info["kind"] == "tdx"
    assert info["mrtd"] == m.mrtd.hex()
    assert info["rtmr"] == [r.hex() for r in m.rtmr]
    assert info["image_hash"] == m.image_hash().hex()
    assert len(info["report_data"]) == 128
    for key in ("mrtd", "report_data", "image_hash", *[f"rtmr{i}" for i in range(4)]):
        value = info[key] if key in info else info["rtmr"][int(key[-1])]
        assert set(value) <= HEX


def test_show_prints_every_register() -> None:
    code, out = cocoon("attest", "show", SAMPLE_QUOTE)
    assert code == 0
    labels = [line.split()[0] for line in out.splitlines()]
    assert labels[:6] == ["kind", "mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"]
    assert "image_hash" in labels and "report_data" in labels


def test_gen_cert_then_show_it_as_pem_and_der(tmp_path: Path) -> None:
    code, out = cocoon("gen-cert", "--attestation", "fake", "--role", "worker", "--out", tmp_path / "w")
    assert code == 0, out
    assert stat.S_IMODE((tmp_path / "w" / "key.pem").stat().st_mode) == 0o600
    pem = tmp_path / "w" / "cert.pem"
    der = tmp_path / "cert.der"
    der.write_bytes(x509.load_pem_x509_certificate(pem.read_bytes()).public_bytes(serialization.Encoding.DER))
    for path in (pem, der):
        code, out = cocoon("attest", "show", path, "--json")
        assert code == 0
        info = json.loads(out)
        assert info["kind"] == "fake"
        assert info["image_hash"] == fake_image_hash("cocoon-dev").hex()
        assert info["claims"]["role"] == "worker"
        assert len(info["rtmr"]) == 4
    code, out = cocoon("gen-cert", "--attestation", "none", "--role", "client", "--out", tmp_path / "c")
    assert code == 0
    info = json.loads(cocoon("attest", "show", tmp_path / "c" / "cert.pem", "--json")[1])
    assert (info["kind"], info["mrtd"], info["rtmr"], info["image_hash"]) == ("none", None, None, None)


def test_gen_cert_tdx_without_tsm_names_what_is_missing(tmp_path: Path) -> None:
    if TSM_REPORT_ROOT.exists():
        pytest.skip("this machine is a TDX guest")
    code, out = cocoon("gen-cert", "--attestation", "tdx", "--role", "worker", "--out", tmp_path)
    assert code == 1
    assert "Linux TSM interface /sys/kernel/config/tsm/report is missing" in out
    assert not (tmp_path / "cert.pem").exists()


def test_show_refuses_garbage(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"not a quote")
    code, out = cocoon("attest", "show", tmp_path / "junk")
    assert code == 1
    assert "neither a quote nor an RA-TLS certificate" in out


def test_verify_sample_quote_inside_and_outside_its_collateral_window() -> None:
    code, out = verify_sample("--policy", "tdx-any", "--now", str(INSIDE_WINDOW))
    assert code == 0, out
    assert out.count("\n") == 1
    image = parse_tdx_quote(SAMPLE_QUOTE.read_bytes()).measurements.image_hash()
    assert out == f"accepted by policy 'tdx-any' for role worker: tdx quote, image hash {image.hex()}, " \
                  "TCB status UpToDate\n"
    code, out = verify_sample("--policy", "tdx-any")
    assert code == 1
    assert out.startswith("refused: DCAP collateral for FMSPC B0C06F000000 is valid from")


def test_verify_refuses_a_tampered_quote(tmp_path: Path) -> None:
    tampered = bytearray(SAMPLE_QUOTE.read_bytes())
    tampered[600] ^= 0x01
    (tmp_path / "q.dat").write_bytes(bytes(tampered))
    code, out = cocoon("attest", "verify", tmp_path / "q.dat", "--policy", "tdx-any", "--collateral",
                       SAMPLE_COLLATERAL, "--now", str(INSIDE_WINDOW))
    assert code == 1
    assert "refused: TDX quote does not verify (DCAP)" in out


def test_verify_with_production_policy_reads_the_registry(tmp_path: Path) -> None:
    image = parse_tdx_quote(SAMPLE_QUOTE.read_bytes()).measurements.image_hash()
    ledger_path = tmp_path / "ledger.sqlite"
    ledger = LocalLedger(ledger_path)
    try:
        code, out = verify_sample("--policy", "production", "--now", str(INSIDE_WINDOW))
        assert code == 2 and "--ledger" in out
        args = ("--policy", "production", "--now", str(INSIDE_WINDOW), "--ledger", ledger_path)
        code, out = verify_sample(*args)
        assert code == 1
        assert f"refused: image hash {image.hex()} is not allowed for role 'worker'" in out
        ledger.set_allowed_images("worker", [image])
        code, out = verify_sample(*args)
        assert code == 0, out
        code, out = verify_sample(*args, "--role", "client")  # its rules allow any tdx image
        assert code == 0, out
        code, out = verify_sample(*args[:-2], "--role", "proxy", "--ledger", ledger_path)
        assert code == 1 and "for role 'proxy'" in out
    finally:
        ledger.close()


def test_verify_certificate_against_policies(tmp_path: Path) -> None:
    cocoon("gen-cert", "--attestation", "fake", "--role", "proxy", "--out", tmp_path)
    cert = tmp_path / "cert.pem"
    code, out = cocoon("attest", "verify", cert, "--policy", "dev")
    assert code == 0
    image = fake_image_hash("cocoon-dev").hex()
    assert out.startswith(f"accepted by policy 'dev': proxy certificate, kind fake, image hash {image}, key ")
    cocoon("gen-cert", "--attestation", "none", "--role", "client", "--out", tmp_path / "client")
    code, out = cocoon("attest", "verify", tmp_path / "client" / "cert.pem", "--policy", "dev")
    assert code == 0 and out.startswith("accepted by policy 'dev': client certificate, kind none, image hash none")
    code, out = cocoon("attest", "verify", cert, "--policy", "tdx-any")
    assert code == 1
    assert out == "refused: attestation kind 'fake' is not allowed for role 'proxy' by policy 'tdx-any' " \
                  "(allowed: tdx)\n"
    code, out = cocoon("attest", "verify", cert, "--policy", "dev", "--now", "1")
    assert code == 1 and "not valid before" in out
    code, out = cocoon("attest", "verify", cert, "--policy", tmp_path / "missing.toml")
    assert code == 2 and "cannot read policy file" in out


def test_config_hash_is_what_the_node_claims_and_names_a_bad_config(tmp_path: Path) -> None:
    from cocoon.attest.policy import DEV_POLICY
    from cocoon.attest.trustconfig import trust_config
    from cocoon.config import WorkerConfig

    config = tmp_path / "worker.toml"
    config.write_text('name = "w"\nengine = "openai:https://operator-host/v1"\ncoefficient = 1200\n')
    code, out = cocoon("attest", "config-hash", "--role", "worker", "--config", config)
    expected = trust_config("worker", WorkerConfig(name="w", engine="openai:https://operator-host/v1",
                                                   coefficient=1200), DEV_POLICY).digest().hex()
    assert (code, out.strip()) == (0, expected)
    code, out = cocoon("attest", "config-hash", "--role", "proxy", "--config", config)
    assert code == 2 and "unknown field `engine`" in out  # a worker's file is no proxy config
    config.write_text('name = "w"\nengine = "vllm"\n')
    code, out = cocoon("attest", "config-hash", "--role", "worker", "--config", config)
    assert code == 2 and "unknown engine 'vllm'" in out
