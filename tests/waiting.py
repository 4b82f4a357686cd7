"""Waiting for state that lives outside the test (a database row, another process)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import anyio


async def wait_for(predicate: Callable[[], bool | Awaitable[bool]], *, within: float = 10.0,
                   step: float = 0.01, what: str = "condition") -> None:
    """Check ``predicate`` every ``step`` seconds; TimeoutError after ``within`` seconds."""
    for _ in range(max(1, math.ceil(within / step))):
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        await anyio.sleep(step)
    raise TimeoutError(f"timed out after {within} s waiting for {what}")
