"""Runs each mutant: a forked child imports the mutated module in place of the real one and runs, with `pytest -x`,
only the tests that reach the mutated lines; the parent waits for it at most a time limit.

The parent has imported every third-party module the tests need (once, before the first fork) but never the code
under test, so each child starts in a fraction of a second and imports the project afresh, the mutated module
from the code object it was handed. Nothing is written to the source tree.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import resource
import signal
import sys
import threading
import time
import types
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tools.mutation.testing import PYTEST_ARGS, steady_hypothesis

_MEMORY_LIMIT = 8 << 30  # a mutant that allocates without end dies here rather than take the machine with it
_POLL_S = 0.02

# pytest's exit codes: 0 every test passed, 1 some failed, 2 interrupted (a collection error: the mutated module
# does not import); anything else is the runner's fault and is reported, not counted.
KILLED_CODES = frozenset({1, 2})
MISSING_TESTS = 6  # some of the tests the coverage map named were not collected


@dataclass(frozen=True)
class Job:
    module: str  # dotted name of the module to replace
    origin: str  # its file
    code: types.CodeType | None  # the mutated module's code; None runs the real one (the baseline)
    tests: Sequence[str]  # node ids, run in this order
    timeout_s: float
    log: str | None = None  # where the tests' output goes (default: nowhere)


@dataclass(frozen=True)
class Outcome:
    status: str  # killed | survived | timeout | error
    exit_code: int | None
    seconds: float


class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, module: str, origin: str, code: types.CodeType) -> None:
        self.module, self.origin, self.code = module, origin, code

    def find_spec(self, fullname: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.module:
            return None
        spec = importlib.util.spec_from_loader(fullname, self, origin=self.origin)
        assert spec is not None
        spec.has_location = True
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        module.__file__ = self.origin
        exec(self.code, module.__dict__)


def preimport(names: Iterable[str]) -> int:
    """Imports the modules the tests use from outside the repository; how many could be imported."""
    import pytest  # noqa: F401  (and its plugins, through the names)

    count = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            try:
                importlib.import_module(name)
                count += 1
            except BaseException:  # one that cannot be imported alone is simply not preloaded
                sys.modules.pop(name, None)
    if threading.active_count() != 1:
        raise RuntimeError("a preloaded module started a thread: the runner cannot fork safely")
    return count


class _Select:
    """Runs exactly the tests named, in their order (node ids of parametrized tests do not all survive a trip
    through pytest's command line, so the files are collected and the items picked here)."""

    def __init__(self, tests: Sequence[str]) -> None:
        self.order = {t: i for i, t in enumerate(tests)}
        self.missing = False

    def pytest_collection_modifyitems(self, config: object, items: list) -> None:  # type: ignore[type-arg]
        keep = sorted((item for item in items if item.nodeid in self.order), key=lambda item: self.order[item.nodeid])
        self.missing = len(keep) != len(self.order)
        config.hook.pytest_deselected(items=[item for item in items if item.nodeid not in self.order])  # type: ignore[attr-defined]
        items[:] = keep


def _child(job: Job) -> int:
    os.setpgid(0, 0)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    out = os.open(job.log or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_LIMIT, _MEMORY_LIMIT))
    if job.code is not None:
        sys.meta_path.insert(0, _MutantFinder(job.module, job.origin, job.code))
    steady_hypothesis()
    import pytest

    select = _Select(job.tests)
    files = dict.fromkeys(t.split("::")[0] for t in job.tests)
    code = int(pytest.main([*PYTEST_ARGS, "-p", "no:warnings", *files], plugins=[select]))
    return MISSING_TESTS if select.missing and code == 0 else code  # a collection error is a kill


def start(job: Job) -> int:
    """Forks the child that runs `job`; its pid (also its process group)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            code = _child(job)
        finally:
            os._exit(code)
    return pid


def wait(pid: int, job: Job, started: float) -> Outcome | None:
    """The outcome once the child is done (killing it past its time), None while it runs."""
    done, status = os.waitpid(pid, os.WNOHANG)
    elapsed = time.monotonic() - started
    if done == 0:
        if elapsed <= job.timeout_s:
            return None
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        return Outcome("timeout", None, elapsed)
    try:  # what the tests left running in the child's group
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return Outcome("survived", code, elapsed)
    return Outcome("killed" if code in KILLED_CODES else "error", code, elapsed)


def run_all(jobs: Sequence[Job], parallel: int, on_done: object) -> list[Outcome]:
    """Runs `jobs`, `parallel` at a time; calls on_done(index, outcome) as each ends."""
    outcomes: list[Outcome | None] = [None] * len(jobs)
    running: dict[int, tuple[int, float]] = {}  # pid -> (job index, start)
    pending = list(range(len(jobs)))[::-1]
    while pending or running:
        while pending and len(running) < parallel:
            i = pending.pop()
            running[start(jobs[i])] = (i, time.monotonic())
        for pid, (i, started) in list(running.items()):
            outcome = wait(pid, jobs[i], started)
            if outcome is not None:
                del running[pid]
                outcomes[i] = outcome
                on_done(i, outcome)  # type: ignore[operator]
        time.sleep(_POLL_S)
    return [o for o in outcomes if o is not None]
