"""The configuration circuit breaker's rules, on a clock the test moves by hand."""

from __future__ import annotations

import pytest

from realtime_worker.pause import ConfigBreaker, PauseSettings
from tests.helpers import ManualClock

pytestmark = pytest.mark.unit


def breaker(initial: float = 30, maximum: float = 600) -> tuple[ConfigBreaker, ManualClock]:
    clock = ManualClock()
    return ConfigBreaker(PauseSettings(initial_seconds=initial, max_seconds=maximum), clock), clock


def test_closed_until_a_configuration_error() -> None:
    pause, _ = breaker()
    assert not pause.paused and pause.remaining() == 0 and pause.status() is None


def test_a_configuration_error_pauses_for_the_initial_cool_down() -> None:
    pause, clock = breaker()
    assert pause.trip("gemini_auth", claimed_at=clock.now - 5) == 30
    assert pause.remaining() == 30
    status = pause.status()
    assert status is not None
    assert (status.error_code, status.resumes_in_seconds, status.cool_down_seconds,
            status.consecutive) == ("gemini_auth", 30, 30, 1)
    assert "gemini_auth" in status.reason
    clock.now += 29.5
    assert pause.remaining() == pytest.approx(0.5)
    clock.now += 0.5
    assert not pause.paused and pause.remaining() == 0 and pause.status() is None


def test_the_cool_down_doubles_while_the_errors_go_on_up_to_the_cap() -> None:
    pause, clock = breaker()
    seen = []
    for _ in range(7):
        cool_down = pause.trip("gemini_auth", claimed_at=clock.now)  # claimed after the last pause
        assert cool_down is not None
        seen.append(cool_down)
        clock.now += cool_down
    assert seen == [30, 60, 120, 240, 480, 600, 600]


def test_errors_of_runs_claimed_before_the_pause_belong_to_it() -> None:
    """Jobs that were already running when the key broke fail the same way: same pause."""
    pause, clock = breaker()
    claimed = clock.now
    clock.now += 1
    assert pause.trip("gemini_auth", claimed_at=claimed) == 30
    clock.now += 10
    assert pause.trip("gemini_auth", claimed_at=claimed) is None
    assert pause.remaining() == 20  # not extended, not doubled
    clock.now += 20
    assert pause.trip("gemini_auth", claimed_at=claimed) is None  # even after the cool-down
    assert not pause.paused
    assert pause.trip("gemini_auth", claimed_at=clock.now) == 60  # a new claim: a new pause


def test_an_outcome_of_a_run_claimed_after_the_pause_resets_it() -> None:
    pause, clock = breaker()
    pause.trip("gemini_auth", claimed_at=clock.now)
    clock.now += 30
    pause.trip("gemini_auth", claimed_at=clock.now)  # 60 s
    clock.now += 60
    pause.clear(claimed_at=clock.now)  # a job went through: the configuration works again
    assert pause.trip("model_not_found", claimed_at=clock.now) == 30


def test_an_outcome_of_a_run_claimed_before_the_pause_changes_nothing() -> None:
    """A job past its Gemini call when the key broke may still succeed: that proves nothing."""
    pause, clock = breaker()
    claimed = clock.now
    clock.now += 1
    pause.trip("gemini_auth", claimed_at=clock.now)
    clock.now += 5
    pause.clear(claimed_at=claimed)
    assert pause.paused and pause.remaining() == 25
    clock.now += 25
    assert pause.trip("gemini_auth", claimed_at=clock.now) == 60  # the doubling goes on


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="initial_seconds"):
        PauseSettings(initial_seconds=0)
    with pytest.raises(ValueError, match="max_seconds"):
        PauseSettings(initial_seconds=30, max_seconds=10)
