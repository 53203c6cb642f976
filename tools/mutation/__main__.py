"""`make mutate`: mutation testing of the money and trust code; see tools/mutation/operators.py for the mutants."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from tools.mutation import report
from tools.mutation.session import ModuleRun, Result, coverage_map, mutate, prepare
from tools.mutation.targets import TARGETS, parse_target


def _arguments() -> argparse.Namespace:
    names = ", ".join(t.name for t in TARGETS)
    parser = argparse.ArgumentParser(
        prog="python -m tools.mutation",
        description="Mutate the money and trust code one change at a time and run, for each mutant, only the unit "
                    "tests that reach its lines; print per module the mutants killed and those that survived.")
    parser.add_argument("modules", nargs="*", help=f"which targets (default: all): {names}")
    parser.add_argument("--jobs", "-j", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument("--only", help="only mutants whose key contains this text")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep each mutant's test output in CACHE/logs/TARGET-INDEX.log")
    parser.add_argument("--markdown", type=Path,
                        help="also write, as markdown to this file, the last run of every target")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: print the last run of every target (with --markdown: write it too)")
    parser.add_argument("--target", action="append", default=[], metavar="NAME=MODULE[:QUALNAMES]",
                        help="mutate this module instead of the built-in targets")
    parser.add_argument("--src", default="src", help="where the modules are (default src)")
    parser.add_argument("--tests", action="append", help="the tests to select from (default tests/unit)")
    parser.add_argument("--cache", type=Path, default=Path("build/mutation"),
                        help="where the coverage map and results are kept (default build/mutation)")
    return parser.parse_args()


def _write_markdown(path: Path, names: list[str], cache: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.markdown(report.load(names, cache / "results")))


def main() -> int:
    args = _arguments()
    if args.report:
        summaries = report.load([t.name for t in TARGETS], args.cache / "results")
        print(report.text(summaries))
        if args.markdown:
            _write_markdown(args.markdown, [t.name for t in TARGETS], args.cache)
        return 0
    root = Path.cwd().resolve()
    tests = args.tests or ["tests/unit"]
    if args.target:
        targets = [parse_target(t) for t in args.target]
    else:
        by_name = {t.name: t for t in TARGETS}
        unknown = sorted(set(args.modules) - set(by_name))
        if unknown:
            raise SystemExit(f"unknown module(s) {unknown}; expected some of {sorted(by_name)}")
        targets = [by_name[n] for n in args.modules] if args.modules else list(TARGETS)
    sys.path[:0] = [str(root / args.src), str(root)]
    files = sorted({t.path(args.src) for t in (*TARGETS, *targets)} if not args.target else
                   {t.path(args.src) for t in targets})
    cmap = coverage_map(root, args.src, tests, files, args.cache)
    prepare(cmap)

    def progress(result: Result) -> None:
        mark = {"killed": ".", "timeout": "T", "survived": "S", "uncovered": "U", "error": "E"}[result.status]
        print(mark, end="", flush=True)

    runs: list[ModuleRun] = []
    for target in targets:
        started = time.monotonic()
        print(f"{target.name}: ", end="", flush=True)
        run = mutate(target, root, args.src, cmap, args.jobs, args.only, progress, args.cache / "logs",
                     args.keep_logs)
        print(f"  {time.monotonic() - started:.0f} s", flush=True)
        runs.append(run)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip() or "(unknown)"
    if args.only is None:  # a partial run is no module's score
        report.save([report.summary(run, commit) for run in runs], args.cache / "results")
    print()
    print(report.text([report.summary(run, commit) for run in runs]))
    if args.markdown:
        _write_markdown(args.markdown, [t.name for t in (TARGETS if not args.target else targets)], args.cache)
    errors = sum(r.status == "error" for run in runs for r in run.results)
    if errors:
        print(f"{errors} mutant run(s) ended in a runner or pytest error (exit code not 0, 1 or 2)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
