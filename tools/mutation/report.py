"""What a mutation session prints, and the markdown it can save (docs/MUTATION.md)."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path

from tools.mutation.session import ModuleRun, Result

EQUIVALENT = Path(__file__).with_name("equivalent.toml")


def reasons() -> dict[str, dict[str, str]]:
    """target name -> mutant key -> why that surviving mutant is harmless (equivalent.toml)."""
    return tomllib.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}


def _percent(killed: int, total: int) -> str:
    return f"{100 * killed / total:.0f}%" if total else "-"


def _survivor_line(result: Result, why: str | None) -> str:
    m = result.mutant
    status = "no test reaches it" if result.status == "uncovered" else result.status
    line = f"  line {m.line} [{m.kind}] {m.key}  ({status}, {len(result.tests)} tests)"
    return line + (f"\n      harmless: {why}" if why else "\n      UNEXPLAINED")


def text(runs: Sequence[ModuleRun]) -> str:
    known = reasons()
    out = []
    for run in runs:
        timeouts = sum(r.status == "timeout" for r in run.results)
        out.append(f"{run.target.name} ({run.target.module}): killed {run.killed}/{run.total} "
                   f"({_percent(run.killed, run.total)}), {timeouts} by timeout, {len(run.survivors)} survived")
        why = known.get(run.target.name, {})
        out.extend(_survivor_line(r, why.get(r.mutant.key)) for r in run.survivors)
    return "\n".join(out)


def markdown(runs: Sequence[ModuleRun], commit: str) -> str:
    known = reasons()
    out = [
        "# Mutation testing of the money and trust code",
        "",
        f"`make mutate` at commit {commit}: every mutant (one change at a time: comparisons, boolean and",
        "arithmetic operators, constants, removed raises, returns, removed calls; see `tools/mutation/operators.py`),",
        "each run against the unit tests that reach its lines. Written by `make mutate",
        "MUTATE_ARGS=--markdown=docs/MUTATION.md`; the reasons come from `tools/mutation/equivalent.toml`.",
        "",
        "| module | mutants | killed | score |",
        "| --- | ---: | ---: | ---: |",
    ]
    out += [f"| {r.target.name} (`{r.target.module}`) | {r.total} | {r.killed} | {_percent(r.killed, r.total)} |"
            for r in runs]
    out += ["", "## Survivors, and why each is harmless", ""]
    for run in runs:
        why = known.get(run.target.name, {})
        if not run.survivors:
            continue
        out += [f"### {run.target.name}", ""]
        for r in run.survivors:
            reason = why.get(r.mutant.key, "**unexplained**")
            out.append(f"- line {r.mutant.line}, `{r.mutant.key}`: {reason}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
