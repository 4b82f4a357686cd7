"""The sweep: the source of truth behind Realtime's at-most-once hints.

Every interval (and once at start-up) it gives expired leases back with ``worker_reap_expired``
and then wakes the dispatcher, which claims whatever is due: jobs Realtime never announced,
retries whose time has come, jobs of crashed workers.
"""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

import anyio
from loguru import logger

from realtime_worker.errors import QueueError
from realtime_worker.metrics import Metrics
from realtime_worker.queue import JobQueue

REAP_BATCH = 100

Wake = Callable[[UUID | None, str], None]


async def sweep_once(queue: JobQueue, wake: Wake, metrics: Metrics) -> int:
    """Reap expired leases, then wake the dispatcher; returns the number reaped."""
    reaped = 0
    try:
        reaped = await queue.reap_expired(REAP_BATCH)
    except QueueError as exc:
        logger.bind(event="sweep_failed").warning(str(exc))
    if reaped:
        metrics.reaped.inc(reaped)
        logger.bind(event="leases_reaped", count=reaped).info("expired leases given back")
    metrics.mark_sweep()
    wake(None, "sweep")
    return reaped


async def run_sweeper(queue: JobQueue, wake: Wake, metrics: Metrics, interval: float) -> None:
    """Sweep now, then every ``interval`` seconds, until cancelled."""
    while True:
        await sweep_once(queue, wake, metrics)
        await anyio.sleep(interval)
