"""The fake Gemini's quota, per API key: requests per minute and requests in flight.

Like the real API's per-project limits (reference/gemini-api.md §5-6): a request over the limit
is refused at once with 429 RESOURCE_EXHAUSTED, a QuotaFailure naming the limit and a RetryInfo
``retryDelay`` saying when there is room again. The minute is a sliding window over the starts
of admitted requests. Counters tell a benchmark how many requests came and how many were refused.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

WINDOW_SECONDS = 60.0
PER_MINUTE = "GenerateRequestsPerMinutePerProjectPerModel"
CONCURRENT = "GenerateRequestsConcurrentPerProjectPerModel"


@dataclass(frozen=True)
class Refusal:
    quota_id: str
    retry_delay_seconds: float


@dataclass
class KeyUsage:
    starts: deque[float] = field(default_factory=deque)
    in_flight: int = 0


class QuotaLedger:
    """Admits or refuses each request of a key; ``requests`` and ``refused`` count them all."""

    def __init__(self) -> None:
        self._keys: dict[str, KeyUsage] = {}
        self.requests = 0
        self.refused = 0
        self.peak_in_flight = 0

    def admit(self, key: str, per_minute: int, concurrent: int, now: float | None = None) -> Refusal | None:
        """None when admitted (call :meth:`done` after); a Refusal otherwise. 0 means no limit."""
        now = time.monotonic() if now is None else now
        usage = self._keys.setdefault(key, KeyUsage())
        while usage.starts and usage.starts[0] <= now - WINDOW_SECONDS:
            usage.starts.popleft()
        self.requests += 1
        refusal = self._refusal(usage, per_minute, concurrent, now)
        if refusal is not None:
            self.refused += 1
            return refusal
        usage.starts.append(now)
        usage.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, usage.in_flight)
        return None

    @staticmethod
    def _refusal(usage: KeyUsage, per_minute: int, concurrent: int, now: float) -> Refusal | None:
        if per_minute > 0 and len(usage.starts) >= per_minute:
            room_at = usage.starts[len(usage.starts) - per_minute] + WINDOW_SECONDS
            return Refusal(PER_MINUTE, max(room_at - now, 0.001))
        if concurrent > 0 and usage.in_flight >= concurrent:
            return Refusal(CONCURRENT, 1.0)
        return None

    def done(self, key: str) -> None:
        usage = self._keys.get(key)
        if usage is not None and usage.in_flight > 0:
            usage.in_flight -= 1
