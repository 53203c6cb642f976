"""`cocoon log show|verify` over a real local chain: one line and exit 0 when what is asked holds; the reason and
exit 1 when not (a proof for another tree, a forked saved head, a hash the log does not hold), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cocoon.cli import app
from cocoon.ledger.devnet import ledger_path
from cocoon.ledger.local import LocalLedger

IMAGE = "ab" * 32
runner = CliRunner()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    ledger = LocalLedger(ledger_path(tmp_path))
    ledger.set_allowed_images("worker", [IMAGE])
    ledger.close()
    return tmp_path


def cocoon(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["log", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_every_command_has_help() -> None:
    for args in (["--help"], ["show", "--help"], ["verify", "--help"]):
        code, out = cocoon(*args)
        assert code == 0 and "Usage" in out


def test_show_lists_the_head_and_the_entries(state: Path) -> None:
    code, out = cocoon("show", "--state-dir", str(state))
    assert code == 0
    assert "signed head: size 2" in out and f"#1 v2 set_hash kind=worker_image hash={IMAGE} present=True" in out
    code, out = cocoon("show", "--state-dir", str(state), "--json")
    assert code == 0 and [e["op"] for e in json.loads(out)["entries"]] == ["set_params", "set_hash"]


def test_verify_a_saved_head_a_hash_and_a_proof(state: Path) -> None:
    head = state / "head.json"
    code, out = cocoon("verify", "--state-dir", str(state), "--hash", IMAGE, "--save", str(head))
    assert code == 0 and out.startswith("ok: ") and "included as entry #1" in out
    code, out = cocoon("show", "--state-dir", str(state), "--hash", IMAGE)
    assert code == 0
    (state / "proof.json").write_text(out)
    ledger = LocalLedger(ledger_path(state))
    ledger.set_allowed_images("proxy", ["cd" * 32])
    ledger.close()
    # the log grew: the saved head is extended, the old proof is for another tree
    code, out = cocoon("verify", "--state-dir", str(state), "--head", str(head))
    assert code == 0 and "extends the saved head (size 2)" in out
    code, out = cocoon("verify", "--state-dir", str(state), "--proof", str(state / "proof.json"))
    assert code == 1 and "refused: an inclusion proof for another tree" in out
    code, out = cocoon("show", "--state-dir", str(state), "--hash", IMAGE)
    (state / "proof.json").write_text(out)
    code, out = cocoon("verify", "--state-dir", str(state), "--proof", str(state / "proof.json"))
    assert code == 0 and "inclusion proof for entry #1 holds" in out


def test_bad_input_is_refused_with_the_reason(state: Path) -> None:
    code, out = cocoon("verify", "--state-dir", str(state), "--hash", "ef" * 32)
    assert code == 1 and "refused: no entry of the registry log" in out
    (state / "garbage.json").write_text("{not json")
    code, out = cocoon("verify", "--state-dir", str(state), "--proof", str(state / "garbage.json"))
    assert code == 1 and "holds no inclusion proof" in out
    code, out = cocoon("verify", "--state-dir", str(state), "--head", str(state / "absent.json"))
    assert code == 1 and "does not exist" in out
    code, out = cocoon("show", "--state-dir", str(state / "nowhere"))
    assert code == 2 and "no local ledger" in out
    # a head of another chain's log
    other = state / "other"
    LocalLedger(ledger_path(other)).close()
    cocoon("verify", "--state-dir", str(other), "--save", str(state / "other-head.json"))
    code, out = cocoon("verify", "--state-dir", str(state), "--head", str(state / "other-head.json"))
    assert code == 1 and "refused: the saved head is the log of root" in out
