"""Variants of the real worker that the pickup bench runs next to it. Bench-only: nothing here
changes the worker; each patches one class of the unmodified worker before ``realtime-worker run``.

- ``python -m bench.experiments trace <run args>``: the worker as it is, but the Realtime callback
  and the hinted claim report when they ran (``trace:event:<id>``, ``trace:claim-sent:<id>``
  datagrams to ``$BENCH_STARTS_ADDR``), so the pickup splits into hops.
- ``python -m bench.experiments claimed <run args>``: the worker as it is.
- ``python -m bench.experiments no-trim <run args>``: the worker without ``memory.release``
  (no ``malloc_trim`` after image work), for the photo burst bench.

In both the queue reports ``claimed:<id>`` when a claim's answer reached the worker, the end
of a pickup as #7 defines it (commit → job claimed); the competitors report the same from their
own fetch (``bench.competitors``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any
from uuid import UUID

from bench.processors import CLAIMED, StartSignal
from realtime_worker import budget_claims, cli, listener, memory, queue, worker
from realtime_worker.jobs import Job

TRACE = StartSignal.from_env()


def stamp_one(job: Job | None) -> Job | None:
    if job is not None:
        TRACE(CLAIMED + str(job.id), time.monotonic())
    return job


def stamp_all(jobs: list[Job]) -> list[Job]:
    at = time.monotonic()
    for job in jobs:
        TRACE(CLAIMED + str(job.id), at)
    return jobs


class StampedQueue(queue.SupabaseQueue):
    """Reports ``claimed:<id>`` for every job a claim's answer brought."""

    async def claim_job(self, job_id: UUID, worker: str, lease_seconds: int) -> Job | None:
        return stamp_one(await super().claim_job(job_id, worker, lease_seconds))

    async def claim_jobs(self, worker: str, limit: int, lease_seconds: int) -> list[Job]:
        return stamp_all(await super().claim_jobs(worker, limit, lease_seconds))


class StampedBudgetedClaims(budget_claims.BudgetedClaims):
    """The same report for claims within the fleet's Gemini budget (``GEMINI_RPM`` set)."""

    async def claim_job(self, job_id: UUID, worker: str, lease_seconds: int) -> Job | None:
        return stamp_one(await super().claim_job(job_id, worker, lease_seconds))

    async def claim_jobs(self, worker: str, limit: int, lease_seconds: int) -> list[Job]:
        return stamp_all(await super().claim_jobs(worker, limit, lease_seconds))


class TracedListener(listener.Listener):
    def on_insert(self, payload: Any) -> None:
        at = time.monotonic()
        with contextlib.suppress(Exception):
            TRACE(f"trace:event:{payload['data']['record']['id']}", at)
        super().on_insert(payload)

    def on_broadcast(self, message: Any) -> None:
        at = time.monotonic()
        with contextlib.suppress(Exception):
            TRACE(f"trace:event:{message['payload']['job_id']}", at)
        super().on_broadcast(message)


class TracedQueue(StampedQueue):
    async def claim_job(self, job_id: UUID, worker: str, lease_seconds: int) -> Job | None:
        TRACE(f"trace:claim-sent:{job_id}", time.monotonic())
        return await super().claim_job(job_id, worker, lease_seconds)


def patch(name: str) -> None:
    """Swap the class the worker module uses (module attributes, on purpose)."""
    if name == "trace":
        setattr(worker, "SupabaseQueue", TracedQueue)  # noqa: B010
        setattr(worker, "Listener", TracedListener)  # noqa: B010
    elif name == "claimed":
        setattr(worker, "SupabaseQueue", StampedQueue)  # noqa: B010
        setattr(worker, "BudgetedClaims", StampedBudgetedClaims)  # noqa: B010
    elif name == "no-trim":
        setattr(memory, "release", lambda: None)  # noqa: B010
    else:
        raise SystemExit("usage: python -m bench.experiments trace|claimed|no-trim <run args>")


def main(argv: list[str]) -> int:
    patch(argv[0] if argv else "")
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
