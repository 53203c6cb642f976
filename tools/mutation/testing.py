"""How the test runs of a mutation session are made repeatable: the same hypothesis examples in the coverage run
and in every mutant's run, nothing remembered between runs, no deadline a loaded machine could miss, no shrinking."""

from __future__ import annotations

# -x: a mutant is killed at its first failing test; no cache or plugin output between runs.
PYTEST_ARGS = ("-x", "-q", "-p", "no:cacheprovider", "--no-header", "-o", "addopts=")


def steady_hypothesis() -> None:
    from hypothesis import HealthCheck, Phase, settings

    # No shrinking: a failing example is all a mutant needs, and shrinking one can take longer than the tests.
    settings.register_profile("cocoon-mutate", database=None, derandomize=True, deadline=None,
                              phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck),
                              print_blob=False)
    settings.load_profile("cocoon-mutate")
