"""What the worker reports about itself, apart from the server that renders it. No sockets.

A :class:`HealthState` is given its sources when it is built and only reads them: the main
loop's liveness (when it last turned), the listener's live state (a :class:`RealtimeLink` the
listener sets), the configuration pause (the dispatcher's breaker) and a :class:`DatabaseProbe`.
The worker builds it before any of the parts exist, so a source may answer "nothing yet".
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from realtime_worker.pause import PauseStatus


def _no_config_pause() -> PauseStatus | None:
    return None


@dataclass
class RealtimeLink:
    """The listener's live state: subscribed to ``public.jobs`` inserts right now."""

    subscribed: bool = False


class DatabaseProbe:
    """Whether the database answers.

    It trusts a database call that went through ``fresh_seconds`` ago, else it asks (``check``,
    given ``ping_seconds``). So readiness turns false within fresh + ping seconds of an outage,
    true again at the first ping that goes through, and an idle worker nobody asks makes no
    request for it.
    """

    def __init__(self, check: Callable[[], Awaitable[None]] | None = None, *,
                 fresh_seconds: float = 2.0, ping_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._check, self._clock = check, clock
        self.fresh_seconds, self.ping_seconds = fresh_seconds, ping_seconds
        self.ok_at: float | None = None

    def mark_ok(self) -> None:
        """A database call just succeeded: no need to ask again for a while."""
        self.ok_at = self._clock()

    async def ok(self) -> bool:
        fresh = self.ok_at is not None and self._clock() - self.ok_at < self.fresh_seconds
        if fresh or self._check is None:
            return fresh
        with anyio.move_on_after(self.ping_seconds):
            try:
                await self._check()
            except Exception:
                return False
            self.mark_ok()
            return True
        return False


@dataclass(frozen=True)
class Readiness:
    ok: bool
    checks: dict[str, bool]
    config_pause: PauseStatus | None


@dataclass(kw_only=True)
class HealthState:
    mode: str
    database: DatabaseProbe = field(default_factory=DatabaseProbe)
    realtime: RealtimeLink = field(default_factory=RealtimeLink)
    last_tick: Callable[[], float] = time.monotonic  # when the main loop last turned
    config_pause: Callable[[], PauseStatus | None] = _no_config_pause
    stale_after_seconds: float = 60.0
    realtime_required: bool = False
    paused: bool = False  # PAUSE_WORKER: set by the operator, claims nothing at all
    clock: Callable[[], float] = time.monotonic

    @property
    def realtime_subscribed(self) -> bool:
        return self.realtime.subscribed

    def alive(self) -> bool:
        return self.clock() - self.last_tick() < self.stale_after_seconds

    async def readiness(self) -> Readiness:
        checks = {"database": await self.database.ok()}
        if self.realtime_required:
            checks["realtime"] = self.realtime.subscribed
        pause = self.config_pause()
        checks["gemini_config"] = pause is None
        return Readiness(all(checks.values()), checks, pause)
