"""The chaos soak's final stop: every worker gets its SIGTERM before any has to finish.

Stopped one after another, the workers still running go on claiming jobs and sweeping the leases
of the one that is stopping; the verdict would count those as reaps without a kill.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.chaos_stack import WorkerFleet, spawn
from tests.waiting import wait_for

pytestmark = pytest.mark.unit

# Exits 0 only if every peer got its SIGTERM while it was still waiting for its own (5 s at most).
PEER = """
import pathlib, signal, sys, time
me, peers = pathlib.Path(sys.argv[1]), [pathlib.Path(p) for p in sys.argv[2:]]
def stop(*_):
    me.with_suffix(".term").touch()
    for _ in range(100):
        if all(p.with_suffix(".term").exists() for p in peers):
            sys.exit(0)
        time.sleep(0.05)
    sys.exit(3)
signal.signal(signal.SIGTERM, stop)
me.with_suffix(".ready").touch()
while True:
    time.sleep(0.05)
"""


async def test_stop_signals_every_worker_before_waiting_for_any(tmp_path: Path) -> None:
    names = [tmp_path / f"w{n}" for n in (1, 2, 3)]
    fleet = WorkerFleet({}, tmp_path, len(names), generations=[1] * len(names))
    for name in names:
        peers = [str(p) for p in names if p != name]
        fleet.processes.append(await spawn([sys.executable, "-c", PEER, str(name), *peers], {},
                                           name.with_suffix(".log"), tmp_path))
    await wait_for(lambda: all(n.with_suffix(".ready").exists() for n in names), within=30)
    codes = await fleet.stop()
    assert codes == {"w1-gen1": 0, "w2-gen1": 0, "w3-gen1": 0}
    assert fleet.processes == [None, None, None]
