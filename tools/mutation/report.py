"""What a mutation session prints, the summary it keeps per target (build/mutation/results/TARGET.json), and the
markdown made from those summaries (docs/MUTATION.md)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tools.mutation.session import ModuleRun

EQUIVALENT = Path(__file__).with_name("equivalent.toml")

Summary = dict[str, Any]


def reasons() -> dict[str, dict[str, str]]:
    """target name -> mutant key -> why that surviving mutant is harmless (equivalent.toml)."""
    return tomllib.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}


def summary(run: ModuleRun, commit: str) -> Summary:
    return {
        "target": run.target.name, "module": run.target.module, "commit": commit, "total": run.total,
        "killed": run.killed, "timeouts": sum(r.status == "timeout" for r in run.results),
        "survivors": [{"line": r.mutant.line, "kind": r.mutant.kind, "key": r.mutant.key, "status": r.status,
                       "tests": len(r.tests)} for r in run.survivors],
    }


def save(summaries: Sequence[Summary], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for s in summaries:
        (directory / f"{s['target']}.json").write_text(json.dumps(s, indent=1, ensure_ascii=False))


def load(names: Sequence[str], directory: Path) -> list[Summary]:
    """The last summary kept of each target named (those never run are left out)."""
    return [json.loads((directory / f"{n}.json").read_text()) for n in names if (directory / f"{n}.json").exists()]


def _percent(killed: int, total: int) -> str:
    return f"{100 * killed / total:.0f}%" if total else "-"


def text(summaries: Sequence[Summary]) -> str:
    known = reasons()
    out = []
    for s in summaries:
        out.append(f"{s['target']} ({s['module']}): killed {s['killed']}/{s['total']} "
                   f"({_percent(s['killed'], s['total'])}), {s['timeouts']} by timeout, "
                   f"{len(s['survivors'])} survived")
        why = known.get(s["target"], {})
        for m in s["survivors"]:
            status = "no test reaches it" if m["status"] == "uncovered" else m["status"]
            out.append(f"  line {m['line']} [{m['kind']}] {m['key']}  ({status}, {m['tests']} tests)")
            reason = why.get(m["key"])
            out.append(f"      harmless: {reason}" if reason else "      UNEXPLAINED")
    return "\n".join(out)


def markdown(summaries: Sequence[Summary]) -> str:
    known = reasons()
    out = [
        "# Mutation testing of the money and trust code",
        "",
        "`make mutate` (tools/mutation): every mutant, one change at a time (comparisons, conditions, boolean and",
        "arithmetic operators, constants, removed raises, returns, removed calls; `tools/mutation/operators.py`),",
        "run against the unit tests that reach its lines. Written from each module's last run by",
        "`make mutate MUTATE_ARGS=\"--report --markdown docs/MUTATION.md\"`; the reasons come from",
        "`tools/mutation/equivalent.toml`. Score: killed / mutants; the survivors left are all listed below, each",
        "with why it is harmless (equivalent to the code, or observable only in time or in a log line).",
        "",
        "| module | mutants | killed | score | survivors (all harmless) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    out += [f"| {s['target']} (`{s['module']}`) | {s['total']} | {s['killed']} | "
            f"{_percent(s['killed'], s['total'])} | {len(s['survivors'])} |" for s in summaries]
    out += ["", "## Survivors, and why each is harmless", ""]
    for s in summaries:
        if not s["survivors"]:
            continue
        why = known.get(s["target"], {})
        out += [f"### {s['target']}", ""]
        for m in s["survivors"]:
            reason = why.get(m["key"], "**unexplained**")
            out.append(f"- line {m['line']}, `{m['key']}`: {reason}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
