"""One timer that wakes the dispatcher at the earliest moment it was asked for.

A job put back with a retry delay (``run_after = now() + delay``) is due again at a time this
worker knows. Without a timer it waits for the next sweep (up to 30 s in realtime mode); with
one, the dispatcher claims it when it is due. Only the earliest time is kept: when that wake-up
comes, the claim finds every job due by then, and the sweep still finds the rest. No request is
made while nothing is scheduled, so the idle cost is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup


class WakeTimer:
    """Calls ``wake`` at the earliest time :meth:`arm` was given, then forgets it."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._scope: anyio.CancelScope | None = None
        self._due = 0.0

    @property
    def due(self) -> float | None:
        """Loop time of the pending wake-up, if any."""
        return self._due if self._scope is not None else None

    def arm(self, tg: TaskGroup, delay: float) -> None:
        """Wake in ``delay`` seconds, unless an earlier wake-up is already pending."""
        due = anyio.current_time() + max(delay, 0.0)
        if self._scope is not None and self._due <= due:
            return
        self.cancel()
        self._scope, self._due = anyio.CancelScope(), due
        tg.start_soon(self._fire, self._scope, name="wake at due time")

    def cancel(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None

    async def _fire(self, scope: anyio.CancelScope) -> None:
        with scope:
            await anyio.sleep(max(self._due - anyio.current_time(), 0.0))
            self._scope = None
            self._wake()
