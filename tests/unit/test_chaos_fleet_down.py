"""The chaos verdict's windows with no worker up: nobody could reap a lease in them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.chaos import fleet_down
from bench.chaos_stack import Kill

pytestmark = pytest.mark.unit

T0 = 1_800_000_000.0


def _line(event: str, at: float) -> str:
    return json.dumps({"event": event, "time": datetime.fromtimestamp(at, UTC).isoformat()})


def worker_log(folder: Path, name: str, started: float | None, loading: float = 0.0) -> Path:
    """A worker's JSON log: ``worker_starting`` ``loading`` s before its pipeline is ready (from
    then on its sweeper runs)."""
    path = folder / f"{name}.log"
    lines = [json.dumps({"event": "worker_launching", "time": "x"})]
    if started is not None:
        lines += [_line("worker_starting", started - loading), _line("pipeline_ready", started)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_gap_between_the_last_kill_and_the_next_start_is_a_window(tmp_path: Path) -> None:
    logs = [worker_log(tmp_path, "w1-gen1", T0), worker_log(tmp_path, "w2-gen1", T0 + 1),
            worker_log(tmp_path, "w1-gen2", T0 + 12), worker_log(tmp_path, "w2-gen2", None)]
    kills = [Kill("w1-gen1", T0 + 5), Kill("w2-gen1", T0 + 8)]
    windows = fleet_down(logs, kills, T0 + 30)
    assert [(round(a - T0, 3), round(b - T0, 3)) for a, b in windows] == [(8.0, 12.0)]


def test_no_window_while_some_worker_is_up(tmp_path: Path) -> None:
    logs = [worker_log(tmp_path, "w1-gen1", T0), worker_log(tmp_path, "w2-gen1", T0 + 1),
            worker_log(tmp_path, "w1-gen2", T0 + 6)]
    assert fleet_down(logs, [Kill("w1-gen1", T0 + 5), Kill("w2-gen1", T0 + 7)], T0 + 30) == []


def test_a_worker_still_loading_its_pipeline_is_not_up(tmp_path: Path) -> None:
    """Its main loop began at +6, but it could not sweep before its pipeline was ready at +20."""
    logs = [worker_log(tmp_path, "w1-gen1", T0), worker_log(tmp_path, "w1-gen2", T0 + 20, loading=14)]
    windows = fleet_down(logs, [Kill("w1-gen1", T0 + 5)], T0 + 30)
    assert [(round(a - T0, 3), round(b - T0, 3)) for a, b in windows] == [(5.0, 20.0)]
