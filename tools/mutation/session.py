"""One mutation session: map the tests to lines, then run every mutant of each target against its tests."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tools.mutation.operators import Mutant, find_mutants, mutated_tree
from tools.mutation.runner import Job, Outcome, preimport, run_all
from tools.mutation.targets import Target

_BASE_TIMEOUT_S = 30.0  # start-up and collection, on a loaded machine
_SLOWDOWN = 5.0  # times the tests' own duration (measured under coverage, itself slower)
_MAPPING_CODE = [Path(__file__).with_name(n) for n in ("coverage_map.py", "testing.py")]  # what makes the map


@dataclass(frozen=True)
class CoverageMap:
    lines: dict[str, dict[str, list[str]]]  # file -> line -> node ids of the tests that ran it
    imported: dict[str, list[int]]  # file -> lines run at import time (outside any test)
    durations: dict[str, float]
    failed: list[str]
    modules: list[str]


@dataclass
class Result:
    target: Target
    mutant: Mutant
    tests: list[str]
    outcome: Outcome | None  # None: no test reaches the mutant

    @property
    def status(self) -> str:
        return self.outcome.status if self.outcome is not None else "uncovered"

    @property
    def killed(self) -> bool:
        return self.status in ("killed", "timeout")


@dataclass
class ModuleRun:
    target: Target
    results: list[Result] = field(default_factory=list)
    baseline: Outcome | None = None

    @property
    def killed(self) -> int:
        return sum(r.killed for r in self.results)

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def survivors(self) -> list[Result]:
        return [r for r in self.results if not r.killed]


def _digest(paths: Sequence[Path], *extra: str) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path).encode() + b"\0" + path.read_bytes())
    for text in extra:
        h.update(text.encode() + b"\0")
    return h.hexdigest()[:20]


def _test_files(root: Path, tests: Sequence[str]) -> list[Path]:
    found: set[Path] = set()
    for t in tests:
        path = root / t
        found.update([path] if path.is_file() else path.rglob("test_*.py"))
    return sorted(found)


def coverage_map(root: Path, src: str, tests: Sequence[str], files: Sequence[str], cache: Path) -> CoverageMap:
    """The map of which tests reach which lines. Kept per test file: only the test files whose map is stale (the
    file, the code, the test helpers or this tool changed) run again under coverage."""
    helpers = sorted(p for p in (root / "tests").rglob("*.py") if not p.name.startswith("test_"))
    common = _digest([*sorted((root / src).rglob("*.py")), *_MAPPING_CODE, *helpers],
                     *files)
    test_files = _test_files(root, tests)
    entries = {f: cache / "coverage" / f"{f.stem}-{_digest([f], common)}.json" for f in test_files}
    stale = [f for f, entry in entries.items() if not entry.exists()]
    if stale:
        print(f"mapping the tests of {len(stale)} file(s) to lines under coverage (once per change of code or tests)",
              flush=True)
        out = cache / "coverage" / "run.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "tools.mutation.coverage_map", "--out", str(out)]
        args += [a for f in files for a in ("--file", f)]
        args += ["--", "-W", "ignore::pytest.PytestAssertRewriteWarning", *(str(f.relative_to(root)) for f in stale)]
        subprocess.run(args, cwd=root, check=True, stdout=subprocess.DEVNULL, env=_env(root, src))
        ran = json.loads(out.read_text())
        for f in stale:
            mine = str(f.relative_to(root)) + "::"
            entries[f].write_text(json.dumps({
                "lines": {file: {n: [t for t in ids if t.startswith(mine)] for n, ids in by_line.items()}
                          for file, by_line in ran["lines"].items()},
                "imported": ran["imported"], "modules": ran["modules"],
                "durations": {t: d for t, d in ran["durations"].items() if t.startswith(mine)},
                "failed": [t for t in ran["failed"] if t.startswith(mine)],
            }))
        out.unlink()
    lines: dict[str, dict[str, list[str]]] = {}
    imported: dict[str, set[int]] = {}
    durations: dict[str, float] = {}
    failed: list[str] = []
    modules: dict[str, None] = {}  # in import order
    for entry in entries.values():
        raw = json.loads(entry.read_text())
        for file, by_line in raw["lines"].items():
            merged = lines.setdefault(str(Path(file).resolve()), {})
            for n, ids in by_line.items():
                merged.setdefault(n, []).extend(ids)
        for file, numbers in raw["imported"].items():
            imported.setdefault(str(Path(file).resolve()), set()).update(numbers)
        durations.update(raw["durations"])
        failed += raw["failed"]
        modules.update(dict.fromkeys(raw["modules"]))
    if failed:
        print(f"note: {len(failed)} test(s) failed in the coverage run and are not used: {', '.join(failed[:5])}",
              flush=True)
    return CoverageMap(lines=lines, imported={f: sorted(n) for f, n in imported.items()}, durations=durations,
                       failed=failed, modules=list(modules))


def _env(root: Path, src: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root / src), str(root), env.get("PYTHONPATH", "")) if p)
    return env


def tests_for(mutant: Mutant, file: str, cmap: CoverageMap) -> list[str]:
    """The tests that run the mutated lines, fastest first; for code run only at import time (module constants,
    class bodies, default values), every test that runs any line of the module."""
    by_line = cmap.lines.get(file, {})
    span = range(mutant.line, mutant.end_line + 1)
    ids = {t for n in span for t in by_line.get(str(n), ())}
    if not ids and any(n in cmap.imported.get(file, ()) for n in span):
        ids = {t for tests in by_line.values() for t in tests}
    ids -= set(cmap.failed)
    return sorted(ids, key=lambda t: (cmap.durations.get(t, 0.0), t))


def _timeout(tests: Sequence[str], cmap: CoverageMap) -> float:
    return _BASE_TIMEOUT_S + _SLOWDOWN * sum(cmap.durations.get(t, 0.0) for t in tests)


def mutate(target: Target, root: Path, src: str, cmap: CoverageMap, parallel: int, only: str | None,
           progress: Callable[[Result], None], logs: Path, keep_logs: bool = False) -> ModuleRun:
    file = str((root / target.path(src)).resolve())
    source = Path(file).read_text()
    mutants = [m for m in find_mutants(source, target.module, target.include) if only is None or only in m.key]
    run = ModuleRun(target)
    reached = [(m, tests_for(m, file, cmap)) for m in mutants]
    union = sorted({t for _, tests in reached for t in tests}, key=lambda t: (cmap.durations.get(t, 0.0), t))
    if union:  # the tests must pass on the real code, or every mutant would look killed
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"baseline-{target.name}.log"
        [run.baseline] = run_all([Job(target.module, file, None, union, _timeout(union, cmap), str(log))], 1,
                                 lambda i, o: None)
        if run.baseline.status != "survived":
            raise SystemExit(f"{target.name}: the {len(union)} tests reaching it do not pass on the real code "
                             f"({run.baseline.status}, exit {run.baseline.exit_code}; see {log}); fix them first")
    jobs, covered = [], []
    for mutant, tests in reached:
        if not tests:
            result = Result(target, mutant, [], None)
            run.results.append(result)
            progress(result)
            continue
        code = compile(mutated_tree(source, mutant), file, "exec", dont_inherit=True)
        log = str(logs / f"{target.name}-{mutant.index}.log") if keep_logs else None
        jobs.append(Job(target.module, file, code, tests, _timeout(tests, cmap), log))
        covered.append((mutant, tests))

    def done(i: int, outcome: Outcome) -> None:
        result = Result(target, covered[i][0], covered[i][1], outcome)
        run.results.append(result)
        progress(result)

    run_all(jobs, parallel, done)
    run.results.sort(key=lambda r: r.mutant.index)
    return run


def prepare(cmap: CoverageMap) -> int:
    """Imports, in this process, what the tests import from outside the repository (never the project)."""
    count = preimport(cmap.modules)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("cocoon", "tests"))
    if leaked:
        raise RuntimeError(f"the runner imported project modules before forking: {leaked[:5]}")
    return count
