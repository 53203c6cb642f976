"""`cocoon log`: the root registry's transparency log (ledger/translog.py) from the command line.

`show` prints the signed tree head and every entry (or, with `--hash`, the newest entry about a hash and its
inclusion proof, as JSON a later `verify --proof` reads). `verify` checks the log against its signed head, a saved
head against the current one (consistency), a hash's inclusion, or a given inclusion proof; it prints one line and
exits 0 when everything asked holds, the reason and exit 1 when not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import msgspec
import typer

from cocoon.ledger.base import LedgerError
from cocoon.ledger.translog import HeadStore, InclusionProof, LogError, RegistryLog, TreeHead, check_consistency
from cocoon.ledger_cli import Chain

app = typer.Typer(help="The root registry's transparency log: its entries, signed head and proofs.",
                  no_args_is_help=True)

StateDir = Annotated[Path, typer.Option("--state-dir", help="The state directory of `cocoon up` (its chain).")]


def _read(state_dir: Path) -> RegistryLog:
    ledger = Chain(state_dir).ledger  # over the devnet's API, or a local chain file
    try:
        return RegistryLog.read(ledger)
    except (LogError, LedgerError) as exc:
        _refuse(str(exc))
    finally:
        ledger.close()


def _refuse(reason: str) -> NoReturn:
    typer.echo(f"refused: {reason}", err=True)
    raise typer.Exit(1)


def _head_json(head: TreeHead | None) -> Any:
    return None if head is None else json.loads(msgspec.json.encode(head))


@app.command()
def show(state_dir: StateDir = Path(".cocoon"),
         hash_: Annotated[str | None, typer.Option("--hash", help="Show only the newest entry about this hash or "
                                                                "key (hex) and its inclusion proof (JSON).")] = None,
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The signed tree head and the log's entries, oldest first."""
    log = _read(state_dir)
    if hash_ is not None:
        try:
            entry = log.find(hash_)
            proof = log.prove(entry.index)
        except LogError as exc:
            _refuse(str(exc))
        typer.echo(json.dumps({"entry": {"index": entry.index, "version": entry.version, "op": entry.op,
                                         "change": entry.change},
                               "proof": json.loads(msgspec.json.encode(proof)), "head": _head_json(log.head)},
                              indent=1))
        return
    if as_json:
        typer.echo(json.dumps({"head": _head_json(log.head), "size": len(log.entries),
                               "entries": [{"index": e.index, "version": e.version, "op": e.op, "change": e.change,
                                            "leaf": e.leaf.hex()} for e in log.entries]}, indent=1))
        return
    head = log.head
    typer.echo(f"signed head: {head.describe()} (key {head.key.hex()}, root contract {head.root_contract})"
               if head else "signed head: none yet")
    for e in log.entries:
        unsigned = "" if head is not None and e.index < head.size else "  (not yet under a signed head)"
        fields = " ".join(f"{k}={v}" for k, v in e.change.items())
        typer.echo(f"#{e.index} v{e.version} {e.op} {fields}{unsigned}")


@app.command()
def verify(state_dir: StateDir = Path(".cocoon"),
           head: Annotated[Path | None, typer.Option("--head", help="A head saved before (by --save): the log must "
                                                                    "extend it (consistency proof).")] = None,
           hash_: Annotated[str | None, typer.Option("--hash", help="A hash or key (hex) the registry must hold, "
                                                                  "proven by its inclusion under the head.")] = None,
           proof: Annotated[Path | None, typer.Option("--proof", help="An inclusion proof (JSON, as `show --hash` "
                                                                      "prints it) to check against the head.")] = None,
           save: Annotated[Path | None, typer.Option("--save", help="Keep the signed head here once it verifies "
                                                                    "(refused unless it extends the one there).")]
           = None) -> None:
    """Check the signed head against the entries, and whatever else is asked; exit 1 with the reason if not."""
    log = _read(state_dir)
    if log.head is None:
        _refuse("the registry log has no signed head yet")
    current = log.head
    done = [f"head {current.describe()} signed by {current.key.hex()[:16]}…, matching the log's entries"]
    try:
        if head is not None:
            old = HeadStore(head).load()
            if old is None:
                _refuse(f"{head} does not exist")
            check_consistency(old, current, log)
            done.append(f"extends the saved head (size {old.size})")
        if hash_ is not None:
            entry = log.check_trusted(hash_)
            done.append(f"{hash_} included as entry #{entry.index} ({entry.op})")
        if proof is not None:
            given = _load_proof(proof)
            given.verify(current)
            done.append(f"inclusion proof for entry #{given.index} holds")
        if save is not None:
            HeadStore(save).advance(log)
            done.append(f"head saved to {save}")
    except LogError as exc:
        _refuse(str(exc))
    typer.echo("ok: " + "; ".join(done))


def _load_proof(path: Path) -> InclusionProof:
    """An inclusion proof from a file: the `proof` of `show --hash`'s output, or the proof alone."""
    try:
        data = json.loads(path.read_bytes())
        found = data.get("proof", data) if isinstance(data, dict) else data
        return msgspec.json.decode(json.dumps(found), type=InclusionProof)  # bytes as base64, as `show` wrote them
    except (OSError, ValueError, msgspec.DecodeError) as exc:
        raise LogError(f"{path} holds no inclusion proof: {exc}") from None
