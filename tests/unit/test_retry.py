"""The retry policy on its own: backoff, jitter, the server's delay, attempts and deferrals."""

from __future__ import annotations

import math
import random

import pytest

from realtime_worker.errors import PermanentJobError, QuotaJobError, RetryableJobError
from realtime_worker.retry import (
    MAX_RETRY_DELAY_SECONDS,
    Backoff,
    Defer,
    Fail,
    Retry,
    RetryPolicy,
    reconnect_delay,
)

pytestmark = pytest.mark.unit

NO_JITTER = Backoff(base_seconds=5, cap_seconds=600, jitter=0)


def test_backoff_doubles_by_attempt_up_to_its_cap() -> None:
    assert [NO_JITTER.delay(n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 320, 600]
    assert NO_JITTER.delay(10_000) == 600  # no overflow however many attempts


def test_jitter_spreads_the_delay_within_its_band_even_at_the_cap() -> None:
    rng = random.Random(7)
    backoff = Backoff(base_seconds=10, cap_seconds=25, jitter=0.5)
    first = [backoff.delay(1, rng) for _ in range(200)]
    assert all(5 <= d <= 15 for d in first)
    assert len(set(first)) == len(first)
    capped = [backoff.delay(5, rng) for _ in range(200)]
    assert all(12.5 <= d <= 37.5 for d in capped)
    assert len(set(capped)) == len(capped)  # a herd at the cap still spreads out


def test_full_jitter_reaches_down_to_zero() -> None:
    rng = random.Random(3)
    delays = [Backoff(base_seconds=1, cap_seconds=30, jitter=1.0).delay(1, rng) for _ in range(500)]
    assert min(delays) < 0.05 and max(delays) <= 2.0


def test_a_retryable_error_is_retried_after_the_backoff() -> None:
    error = RetryableJobError("x", code="gemini_unavailable")
    assert RetryPolicy(NO_JITTER).decide(error, attempt=2, max_attempts=3) == Retry(10)


def test_the_last_attempt_and_a_permanent_error_fail() -> None:
    policy = RetryPolicy(NO_JITTER)
    assert policy.decide(RetryableJobError("x", code="e"), 3, 3) == Fail()
    assert policy.decide(PermanentJobError("x", code="invalid_params"), 1, 3) == Fail()


def test_an_error_worth_one_more_try_gets_only_that() -> None:
    error = RetryableJobError("x", code="no_image", max_retries=1)
    policy = RetryPolicy(NO_JITTER)
    assert isinstance(policy.decide(error, 1, 5), Retry)
    assert policy.decide(error, 2, 5) == Fail()


def test_the_servers_delay_wins_when_longer_and_is_cut_to_a_day() -> None:
    policy = RetryPolicy(NO_JITTER)
    assert policy.decide(RetryableJobError("x", code="e", retry_after=45.2), 1, 3) == Retry(46)
    assert policy.decide(RetryableJobError("x", code="e", retry_after=1), 1, 3) == Retry(5)
    for huge in (3e9, math.inf):
        decision = policy.decide(RetryableJobError("x", code="e", retry_after=huge), 1, 3)
        assert decision == Retry(MAX_RETRY_DELAY_SECONDS)
    assert policy.decide(RetryableJobError("x", code="e", retry_after=math.nan), 1, 3) == Retry(5)


def test_a_quota_error_defers_even_past_the_attempts_whatever_its_code() -> None:
    policy = RetryPolicy(NO_JITTER)
    for code in ("rate_limited", "daily_quota", "anything"):
        assert policy.decide(QuotaJobError("x", code=code, retry_after=30), 3, 3) == Defer(30)
    assert policy.decide(RetryableJobError("x", code="e"), 3, 3) == Fail()


def test_a_rate_limit_code_on_a_plain_retryable_error_spends_attempts() -> None:
    limited = RetryableJobError("x", code="rate_limited", retry_after=30)
    assert RetryPolicy(NO_JITTER).decide(limited, 1, 3) == Retry(30)
    assert RetryPolicy(NO_JITTER).decide(limited, 3, 3) == Fail()


def test_reconnects_start_from_the_first_step_after_a_session_that_worked() -> None:
    rng = random.Random(1)
    backoff = Backoff(base_seconds=0.25, cap_seconds=15, jitter=1.0)
    assert max(reconnect_delay(0, backoff, rng) for _ in range(200)) <= 0.5
    assert max(reconnect_delay(20, backoff, rng) for _ in range(200)) <= 30
