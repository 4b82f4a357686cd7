"""bench.report's --update merge: what a rerun replaces, and a failure that a rerun clears."""

from __future__ import annotations

from bench.report import Results, Section, merge


def results(*titles: str, failures: list[str] | None = None) -> Results:
    found = Results(command="python -m bench x", quick=False)
    found.sections = [Section(title=t, lines=[f"figures of {t}"]) for t in titles]
    found.failures = list(failures or [])
    return found


def test_a_scenario_that_ran_again_clears_its_old_failure_and_keeps_the_others() -> None:
    old = results("Pickup", failures=["sources: ConnectorException: ", "idle: TimeoutError: "])
    new = results("Realtime sources")
    merged = merge(old, new, ["sources"])
    assert merged.failures == ["idle: TimeoutError: "]
    assert [s.title for s in merged.sections] == ["Pickup", "Realtime sources"]


def test_a_new_failure_is_kept_and_an_unnamed_rerun_clears_nothing() -> None:
    old = results("Pickup", failures=["sources: ConnectorException: "])
    new = results(failures=["sources: OSError: "])
    assert merge(old, new, ["sources"]).failures == ["sources: OSError: "]
    old = results("Pickup", failures=["sources: ConnectorException: "])
    assert merge(old, results()).failures == ["sources: ConnectorException: "]
