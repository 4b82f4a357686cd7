"""SIGTERM and SIGINT that arrive before the worker's event loop listens for them.

Python's default action for SIGTERM is to end the process at once (exit status -15). Start-up
(the interpreter, then the imports of the CLI and the worker) takes a second or more on a busy
machine, and a platform may stop an instance it just started (a scale-in, a deploy replaced
again): the worker would die instead of exiting 0. ``hold`` is called first thing by the entry
point of ``realtime-worker run``; each signal until the loop takes over is remembered, and the
worker treats it as if it had come afterwards. This module imports nothing but the standard
library, so it costs nothing to load first.
"""

from __future__ import annotations

import signal
from types import FrameType

HELD = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []


def _remember(signum: int, _frame: FrameType | None) -> None:
    _received.append(signum)


def hold() -> None:
    """From now on SIGTERM and SIGINT are remembered instead of acted on."""
    for sig in HELD:
        signal.signal(sig, _remember)


def take() -> list[int]:
    """The signals remembered so far (each once), oldest first."""
    taken = list(_received)
    del _received[: len(taken)]
    return taken
