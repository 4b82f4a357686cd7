"""bench.report's --update merge: what a rerun replaces, and a failure that a rerun clears."""

from __future__ import annotations

import json
from pathlib import Path

from bench.report import Results, Section, load, merge, write


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


FACTS = {"CPU": "64 cores, Some Other CPU", "memory": "1.0 GiB", "OS": "Plan 9", "Python": "3.99.0",
         "packages": "realtime 0.0.1"}


def test_a_report_written_again_elsewhere_keeps_the_measuring_machine(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    measured = results("Pickup")
    measured.machine = dict(FACTS)
    write(measured, path)
    write(load(path), path)  # written again, on this machine
    assert "| CPU | 64 cores, Some Other CPU |" in path.read_text()
    assert load(path).machine == FACTS


def test_a_report_from_before_the_facts_were_kept_takes_them_from_its_table(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    measured = results("Pickup")
    measured.machine = dict(FACTS)
    write(measured, path)
    text = path.read_text()
    data = json.loads(text.split("<!-- bench-data ", 1)[1].rsplit(" -->", 1)[0])
    del data["machine"]
    path.write_text(text.split("<!-- bench-data ", 1)[0] + f"<!-- bench-data {json.dumps(data)} -->\n")
    assert load(path).machine == FACTS
