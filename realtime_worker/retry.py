"""The retry policy: when to try again, and how long to wait first. No I/O.

Everyone who tries something again asks here: the run of a job (a failed job's next attempt),
the listener (rebuilding its Realtime client), the recording of an outcome through a database
outage. There is one backoff formula (:class:`Backoff`: exponential, capped, jittered), one bound
on what a server may ask for (:data:`MAX_RETRY_DELAY_SECONDS`), and one answer type,
:data:`Decision`: :class:`Retry` (another attempt, counted), :class:`Defer` (wait and try again
without spending an attempt: a rate limit says nothing about the job) or :class:`Fail`.

Errors carry what the remote system said (``JobError.retryable``, ``retry_after`` from Gemini's
``RetryInfo``, ``max_retries`` for errors worth one more try at most); the policy combines it
with the job's attempts.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from realtime_worker.errors import JobError, QuotaJobError

# The longest wait before a retry: a day. The server's requested delay comes from outside and
# ends in ``worker_fail_job``'s ``int`` argument, so anything longer (or not a number) is cut here.
MAX_RETRY_DELAY_SECONDS = 86_400

# Pauses between attempts to record an outcome while the database is unreachable.
RECORD_RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0, 2.0)

_MAX_DOUBLINGS = 30  # 2**30 times any base is past every cap; keeps the float finite


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter, by attempt number (1-based).

    The delay is ``min(cap, base * 2**(attempt-1))`` times a factor drawn uniformly from
    ``[1 - jitter, 1 + jitter]``. The cap bounds the middle of the band, not its top: cutting
    the result to the cap would put every long wait on one instant, the herd jitter is there
    to spread. ``jitter=1`` is "full jitter": uniform over ``[0, 2 * min(cap, ...)]``.
    """

    base_seconds: float = 5.0
    cap_seconds: float = 600.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        doublings = min(max(0, attempt - 1), _MAX_DOUBLINGS)
        raw = min(self.cap_seconds, self.base_seconds * 2.0 ** doublings)
        low, high = 1 - self.jitter, 1 + self.jitter
        spread = rng.uniform(low, high) if rng else random.uniform(low, high)
        return max(0.0, raw * spread)


@dataclass(frozen=True)
class Retry:
    """Try again in ``after`` seconds; the attempt counts."""

    after: int


@dataclass(frozen=True)
class Defer:
    """Try again in ``after`` seconds without spending an attempt (a rate limit)."""

    after: int


@dataclass(frozen=True)
class Fail:
    """No more attempts: the job fails for good."""


Decision = Retry | Defer | Fail


@dataclass(frozen=True)
class RetryPolicy:
    """What a failed attempt of a job leads to.

    A :class:`~realtime_worker.errors.QuotaJobError` (Gemini's quota, or the fleet's budget of
    it, had no room) defers the job instead of spending an attempt: the error's class says so,
    not its code. The job's own budget of deferrals is kept by ``worker_defer_job``.
    """

    backoff: Backoff = Backoff()

    def decide(self, error: JobError, attempt: int, max_attempts: int,
               rng: random.Random | None = None) -> Decision:
        if not error.retryable:
            return Fail()
        if isinstance(error, QuotaJobError):
            return Defer(self.defer_wait(error, rng))
        after = self.wait(error, attempt, rng)
        if attempt >= max_attempts:
            return Fail()
        if error.max_retries is not None and attempt > error.max_retries:
            return Fail()
        return Retry(after)

    def defer_wait(self, error: JobError, rng: random.Random | None = None) -> int:
        """A deferral waits what the server asked for (Gemini's retryDelay), else one backoff
        step: no attempt was spent, so nothing grows; cut to :data:`MAX_RETRY_DELAY_SECONDS`."""
        wanted = _finite(error.retry_after) or self.backoff.delay(1, rng)
        return math.ceil(min(wanted, MAX_RETRY_DELAY_SECONDS))

    def wait(self, error: JobError, attempt: int, rng: random.Random | None = None) -> int:
        """Whole seconds: the server's requested delay when it is longer than the backoff,
        either cut to :data:`MAX_RETRY_DELAY_SECONDS`."""
        wanted = max(_finite(error.retry_after), self.backoff.delay(attempt, rng))
        return math.ceil(min(wanted, MAX_RETRY_DELAY_SECONDS))


def reconnect_delay(failures: int, backoff: Backoff, rng: random.Random) -> float:
    """Seconds before rebuilding a connection after ``failures`` failed sessions in a row
    (0: the last one worked and broke later)."""
    return backoff.delay(failures + 1, rng)


def _finite(seconds: float | None) -> float:
    """A requested delay as a number of seconds >= 0 (NaN and None count as none; +inf stays)."""
    if seconds is None or math.isnan(seconds):
        return 0.0
    return max(seconds, 0.0)
