"""Which tests reach which lines: one pytest run under coverage, a coverage context per test.

Run as `python -m tools.mutation.coverage_map --out MAP.json --file SRC.py ... -- PYTEST ARGS`, in a process of
its own (the runner forks mutants from a process that never imported the code under test). The map says, per
file and line, the node ids of the tests that ran it; which lines ran only at import time; each test's duration
and whether it passed; and the modules the run imported from outside the repository (the runner imports them
once, before forking).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Generator
from pathlib import Path

import coverage
import pytest

from tools.mutation.testing import PYTEST_ARGS, steady_hypothesis


class _PerTest:
    """A pytest plugin switching the coverage context to the running test, and noting durations and failures."""

    def __init__(self, cov: coverage.Coverage) -> None:
        self.cov = cov
        self.durations: dict[str, float] = defaultdict(float)
        self.failed: set[str] = set()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
        self.cov.switch_context(item.nodeid)
        try:
            return (yield)
        finally:
            self.cov.switch_context("")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.durations[report.nodeid] += report.duration
        if report.failed:
            self.failed.add(report.nodeid)


def _outside(root: Path) -> list[str]:
    """Names of the imported modules that are not the repository's own, in the order they were imported (some
    C accelerators, such as _asyncio, misbehave after a fork when imported before their package)."""
    names = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not all(part.isidentifier() for part in name.split(".")) or name == "__main__":
            continue
        if name.split(".")[0] in ("cocoon", "tests", "tools", "conftest", "coverage"):
            continue
        if file is not None and Path(file).resolve().is_relative_to(root):
            continue
        names.append(name)
    return names


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mutation.coverage_map",
                                     description="Map each line of the given files to the tests that run it.")
    parser.add_argument("--out", type=Path, required=True, help="where to write the map (JSON)")
    parser.add_argument("--file", action="append", type=Path, required=True, help="a source file to map")
    parser.add_argument("pytest_args", nargs="*", help="what pytest runs (after --)")
    args = parser.parse_args()
    files = [str(f.resolve()) for f in args.file]
    steady_hypothesis()
    cov = coverage.Coverage(data_file=None, include=files, config_file=False)
    plugin = _PerTest(cov)
    cov.start()
    try:
        rc = pytest.main([*PYTEST_ARGS[1:], *args.pytest_args], plugins=[plugin])  # every test, not -x
    finally:
        cov.stop()
    data = cov.get_data()
    lines: dict[str, dict[int, list[str]]] = {}
    imported: dict[str, list[int]] = {}
    for file in files:
        by_line = data.contexts_by_lineno(file)
        lines[file] = {n: sorted(c for c in contexts if c) for n, contexts in by_line.items()}
        imported[file] = sorted(n for n, contexts in by_line.items() if "" in contexts)
    args.out.write_text(json.dumps({
        "lines": lines, "imported": imported, "durations": plugin.durations, "failed": sorted(plugin.failed),
        "modules": _outside(Path.cwd().resolve()), "exit": int(rc),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
