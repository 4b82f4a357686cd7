"""Claims that take their Gemini grant with them (migration 0014, docs/scaling.md).

With the fleet's budget on (``GEMINI_RPM``), a slot must not hold a job that only waits for the
budget: that job was chosen too early, and a user arriving later waits behind every grant such
jobs hold. So :class:`BudgetedClaims` claims through ``worker_claim_jobs_within_budget``, which
claims only as many jobs as the budget can start within ``GEMINI_CLAIM_AHEAD_SECONDS`` and gives
each its grant in the same call. The job's first Gemini request uses that grant
(:class:`PrepaidGrants`, read by :class:`~realtime_worker.budget.BudgetedGenerator`); a grant its
job never used (the job failed before asking Gemini) is released when the job's outcome is
written. When the budget held a claim back, the answer says when it has room again and the
dispatcher is woken then (``on_room``). Every other call goes to the queue unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

from loguru import logger

from realtime_worker.budget import Budget, BudgetSettings, PrepaidGrants
from realtime_worker.errors import QueueError
from realtime_worker.jobs import Job, JobResult
from realtime_worker.queue import SupabaseQueue

T = TypeVar("T")


def _ignore_room(_: float) -> None:
    """``on_room`` until the dispatcher is there to be woken."""


class BudgetedClaims:
    """The queue, with claims that take the fleet's Gemini budget (see the module's text)."""

    def __init__(self, queue: SupabaseQueue, budget: Budget, settings: BudgetSettings,
                 ahead_seconds: float, prepaid: PrepaidGrants) -> None:
        self._queue, self._budget, self._s = queue, budget, settings
        self._ahead, self.prepaid = ahead_seconds, prepaid
        self.on_room: Callable[[float], None] = _ignore_room

    async def claim_job(self, job_id: UUID, worker: str, lease_seconds: int) -> Job | None:
        jobs = await self._claim(worker, 1, lease_seconds, job_id)
        return jobs[0] if jobs else None

    async def claim_jobs(self, worker: str, limit: int, lease_seconds: int) -> list[Job]:
        return await self._claim(worker, limit, lease_seconds, None)

    async def _claim(self, worker: str, limit: int, lease_seconds: int,
                     job_id: UUID | None) -> list[Job]:
        answer: dict[str, Any] = await self._queue.call("worker_claim_jobs_within_budget", {
            "p_worker": worker, "p_limit": limit, "p_lease_seconds": lease_seconds,
            "p_job_id": str(job_id) if job_id is not None else None,
            "p_model": self._s.model, "p_rpm": self._s.rpm,
            "p_max_concurrent": self._s.max_concurrent, "p_ahead_seconds": self._ahead,
            "p_grant_lease_seconds": self._s.lease_seconds})
        for given in answer["grants"]:
            self.prepaid.put(UUID(given["job"]), given["grant"], float(given["wait_seconds"]))
        if answer["wait_seconds"] is not None:
            self.on_room(float(answer["wait_seconds"]))
        return [Job.from_row(row) for row in answer["jobs"]]

    async def heartbeat(self, job_id: UUID, worker: str, lease_seconds: int) -> bool:
        return await self._queue.heartbeat(job_id, worker, lease_seconds)

    async def complete(self, job_id: UUID, worker: str, result: JobResult) -> bool:
        return await self._ended(job_id, self._queue.complete(job_id, worker, result))

    async def fail(self, job_id: UUID, worker: str, error: str, code: str,
                   retry_in_seconds: int | None) -> str | None:
        return await self._ended(job_id, self._queue.fail(job_id, worker, error, code,
                                                          retry_in_seconds))

    async def defer(self, job_id: UUID, worker: str, error: str, code: str,
                    retry_in_seconds: int) -> str | None:
        return await self._ended(job_id, self._queue.defer(job_id, worker, error, code,
                                                           retry_in_seconds))

    async def release(self, job_id: UUID, worker: str) -> bool:
        return await self._ended(job_id, self._queue.release(job_id, worker))

    async def reap_expired(self, limit: int) -> int:
        return await self._queue.reap_expired(limit)

    async def _ended(self, job_id: UUID, outcome: Awaitable[T]) -> T:
        """Write the job's outcome, then free the grant it never used (whatever the write did)."""
        try:
            return await outcome
        finally:
            await self._unused(job_id)

    async def _unused(self, job_id: UUID) -> None:
        """Free the grant of a job that ended before its Gemini request (its lease would, later)."""
        prepaid = self.prepaid.take(job_id)
        if prepaid is None:
            return
        try:
            await self._budget.release(prepaid.grant, "unused", None)
        except QueueError as exc:
            logger.bind(event="budget_release_failed", job_id=str(job_id)).warning(str(exc))
