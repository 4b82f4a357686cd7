"""The health state on its own: sources in, liveness and readiness out (no server, no sockets)."""

from __future__ import annotations

import anyio
import pytest

from realtime_worker.health_state import DatabaseProbe, HealthState, RealtimeLink
from realtime_worker.pause import PauseStatus
from tests.helpers import ManualClock

pytestmark = pytest.mark.unit


class Pings:
    """A database check that answers, fails or hangs, and counts its calls."""

    def __init__(self) -> None:
        self.calls, self.fails, self.hangs = 0, False, False

    async def __call__(self) -> None:
        self.calls += 1
        if self.hangs:
            await anyio.sleep_forever()
        if self.fails:
            raise ConnectionError("refused")


def test_alive_while_the_main_loop_turns_stalled_when_it_stops() -> None:
    clock, tick = ManualClock(), ManualClock()
    state = HealthState(mode="poll", last_tick=tick, clock=clock, stale_after_seconds=60)
    clock.now += 59
    assert state.alive()
    clock.now += 2
    assert not state.alive()
    tick.now = clock.now
    assert state.alive()


async def test_a_recent_database_call_spares_the_ping() -> None:
    clock, pings = ManualClock(), Pings()
    probe = DatabaseProbe(pings, fresh_seconds=2, clock=clock)
    probe.mark_ok()
    clock.now += 1
    assert await probe.ok() and pings.calls == 0
    clock.now += 2
    assert await probe.ok() and pings.calls == 1
    assert await probe.ok() and pings.calls == 1  # the ping that went through is fresh too


async def test_a_failing_or_hanging_ping_is_not_ready() -> None:
    pings = Pings()
    probe = DatabaseProbe(pings, ping_seconds=0.05, clock=ManualClock())
    pings.fails = True
    assert not await probe.ok()
    pings.fails, pings.hangs = False, True
    assert not await probe.ok()
    assert pings.calls == 2


async def test_without_a_check_only_a_fresh_call_counts() -> None:
    probe = DatabaseProbe(clock=ManualClock())
    assert not await probe.ok()
    probe.mark_ok()
    assert await probe.ok()


async def test_readiness_needs_the_subscription_only_when_realtime_is_required() -> None:
    link, probe = RealtimeLink(), DatabaseProbe(clock=ManualClock())
    probe.mark_ok()
    poll = HealthState(mode="poll", database=probe, realtime=link)
    realtime = HealthState(mode="realtime", database=probe, realtime=link, realtime_required=True)
    assert (await poll.readiness()).ok
    ready = await realtime.readiness()
    assert not ready.ok and ready.checks == {"database": True, "realtime": False,
                                             "gemini_config": True}
    link.subscribed = True
    assert (await realtime.readiness()).ok and realtime.realtime_subscribed


async def test_a_configuration_pause_makes_the_worker_unready_and_is_reported() -> None:
    probe = DatabaseProbe(clock=ManualClock())
    probe.mark_ok()
    pause = PauseStatus(error_code="api_key_invalid", resumes_in_seconds=30, cool_down_seconds=60,
                        consecutive=1)
    state = HealthState(mode="poll", database=probe, config_pause=lambda: pause)
    ready = await state.readiness()
    assert not ready.ok and ready.checks["gemini_config"] is False
    assert ready.config_pause is pause
