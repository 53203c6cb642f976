"""The mutation runner behind `make mutate` (tools/mutation): which mutants it makes, and that a session kills
exactly the mutants the tests notice, running only the tests that reach each one."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tools.mutation.operators import find_mutants, mutated_tree
from tools.mutation.targets import parse_target

_REPO = Path(__file__).resolve().parents[2]

_SOURCE = textwrap.dedent('''
    """A toy fee module."""
    import logging

    log = logging.getLogger(__name__)
    LIMIT = 10


    def fee(amount: int) -> int:
        """Two percent, rounded down."""
        if amount < 0:
            raise ValueError(f"negative amount {amount + 1}")
        log.debug("fee", extra={"fields": {"amount": amount * 2}})
        return amount * 2 // 100


    def unused(flag: bool, items: list[int]) -> bool:
        if items:
            items.append(-1)
        return not flag and LIMIT in items
''')


def test_each_operator_makes_the_mutants_it_documents() -> None:
    keys = {m.key for m in find_mutants(_SOURCE, "toy.fees")}
    assert keys == {
        "<module>: 10 → 11",
        "fee: amount < 0 → amount <= 0", "fee: amount < 0 → amount >= 0", "fee: 0 → 1",
        "fee: raise ValueError(f'negative amount {amount + 1}') → (removed)",
        "fee: return amount * 2 // 100 → return 0",
        "fee: amount * 2 // 100 → amount * 2 * 100", "fee: amount * 2 → amount // 2",
        "fee: 2 → 3", "fee: 100 → 101",
        "unused: items → not items", "unused: items.append(-1) → (removed)", "unused: -1 → 1", "unused: 1 → 2",
        "unused: return not flag and LIMIT in items → return not (not flag and LIMIT in items)",
        "unused: not flag and LIMIT in items → not flag or LIMIT in items", "unused: not flag → flag",
        "unused: LIMIT in items → LIMIT not in items",
    }  # nothing in the docstrings, the f-string, the logging call or the annotations


def test_each_mutant_changes_one_line_and_keeps_line_numbers() -> None:
    original = ast.parse(_SOURCE)
    lines = ast.unparse(original).splitlines()
    statements = [s.lineno for s in ast.walk(original) if isinstance(s, ast.stmt)]
    for mutant in find_mutants(_SOURCE, "toy.fees"):
        tree = mutated_tree(_SOURCE, mutant)
        compile(tree, "toy/fees.py", "exec")
        mutated = ast.unparse(tree).splitlines()
        assert len(mutated) == len(lines)
        assert sum(a != b for a, b in zip(lines, mutated, strict=True)) == 1, mutant.key
        assert [s.lineno for s in ast.walk(tree) if isinstance(s, ast.stmt)] == statements


def test_include_limits_the_mutants_to_the_named_functions() -> None:
    mutants = find_mutants(_SOURCE, "toy.fees", include=("unused",))
    assert mutants and {m.qualname for m in mutants} == {"unused"}
    assert parse_target("x=toy.fees:fee,Cls.method").include == ("fee", "Cls.method")


def test_a_session_kills_what_the_tests_notice_and_lists_the_rest(tmp_path: Path) -> None:
    (tmp_path / "src" / "toy").mkdir(parents=True)
    (tmp_path / "src" / "toy" / "__init__.py").write_text("")
    (tmp_path / "src" / "toy" / "fees.py").write_text(_SOURCE)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_fees.py").write_text(textwrap.dedent('''
        import pytest
        from toy.fees import fee

        def test_two_percent():
            assert fee(1000) == 20

        def test_negative_amounts_are_refused():
            with pytest.raises(ValueError):
                fee(-1)

        def test_unrelated():  # reaches no mutated line: never run for a mutant
            assert True
    '''))
    env = {**os.environ, "PYTHONPATH": str(_REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "tools.mutation", "--target", "fees=toy.fees", "--tests", "tests/test_fees.py",
         "--cache", "cache"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    # 18 mutants. In fee 10: 8 killed, `amount <= 0` and `amount < 1` survive (no test charges 0). The module
    # constant, run at import, is tried with every test that reaches the module, and survives. No test reaches
    # `unused` (8 mutants).
    assert "fees (toy.fees): killed 7/18 (39%), 0 by timeout, 11 survived" in done.stdout, done.stdout
    assert "<module>: 10 → 11  (survived, 2 tests)" in done.stdout
    assert "fee: amount < 0 → amount <= 0  (survived, 2 tests)" in done.stdout
    assert "fee: 0 → 1  (survived, 2 tests)" in done.stdout
    assert "unused: not flag → flag  (no test reaches it, 0 tests)" in done.stdout
