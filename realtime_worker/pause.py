"""The pause after Gemini refused the worker's own configuration: a circuit breaker, no I/O.

A bad or revoked key, lapsed billing, a region or a retired model (``ConfigurationJobError``)
is not the job's fault, and every other job would fail the same way. The dispatcher gives such
a job back and asks :class:`ConfigBreaker` whether to stop claiming, and for how long.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# The longest cool-down: the doubling's cap (CONFIG_PAUSE_SECONDS may not exceed it).
MAX_PAUSE_SECONDS = 600.0


@dataclass(frozen=True, kw_only=True)
class PauseSettings:
    """Cool-downs of the pause after a configuration error: the first one, and the doubling's cap."""

    initial_seconds: float = 30.0
    max_seconds: float = MAX_PAUSE_SECONDS

    def __post_init__(self) -> None:
        if not self.initial_seconds > 0:
            raise ValueError("initial_seconds must be > 0")
        if self.max_seconds < self.initial_seconds:
            raise ValueError("max_seconds must be >= initial_seconds")


@dataclass(frozen=True)
class PauseStatus:
    """A pause in force, as ``/ready`` reports it."""

    error_code: str
    resumes_in_seconds: float
    cool_down_seconds: float
    consecutive: int  # pauses since the configuration last worked

    @property
    def reason(self) -> str:
        return (f"claims paused: Gemini refused the worker's configuration ({self.error_code}); "
                f"queued jobs wait, claiming resumes in {math.ceil(self.resumes_in_seconds)} s")


class ConfigBreaker:
    """The circuit breaker for a configuration Gemini refuses; no I/O, its clock injectable.

    A configuration error trips it: no claims for a cool-down of ``initial_seconds``, doubled up
    to ``max_seconds`` on each trip until something shows the configuration works. Runs are told
    apart by when they were claimed (on ``clock``): one claimed before the latest trip met the
    same broken configuration, so its error is part of that pause (no new pause, no doubling) and
    its success proves nothing. The success of a run claimed after it resets the breaker.
    """

    def __init__(self, settings: PauseSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._s, self._clock = settings, clock
        self._tripped_at: float | None = None
        self._cool_down = 0.0  # of the latest pause; 0 once a run went through
        self._trips = 0
        self._code = ""

    @property
    def paused(self) -> bool:
        return self.remaining() > 0

    def remaining(self) -> float:
        """Seconds until claims may start again (0: they may now)."""
        if self._tripped_at is None:
            return 0.0
        return max(self._tripped_at + self._cool_down - self._clock(), 0.0)

    def status(self) -> PauseStatus | None:
        left = self.remaining()
        if left <= 0:
            return None
        return PauseStatus(self._code, left, self._cool_down, self._trips)

    def trip(self, code: str, claimed_at: float) -> float | None:
        """A run claimed at ``claimed_at`` met a configuration error: the new pause's cool-down,
        or None when the run belongs to the latest pause."""
        if self._before_last_trip(claimed_at):
            return None
        self._trips += 1
        initial, cap = self._s.initial_seconds, self._s.max_seconds
        self._cool_down = initial if self._trips == 1 else min(self._cool_down * 2, cap)
        self._tripped_at, self._code = self._clock(), code
        return self._cool_down

    def clear(self, claimed_at: float) -> None:
        """A run claimed at ``claimed_at`` went through: the configuration works."""
        if not self._before_last_trip(claimed_at):
            self._trips, self._cool_down = 0, 0.0

    def _before_last_trip(self, claimed_at: float) -> bool:
        # At the very instant of the trip too (a coarse or virtual clock): no claim is sent while
        # paused, so a claim stamped with the trip's time was sent before it.
        return self._tripped_at is not None and claimed_at <= self._tripped_at
