"""One Gemini budget for the whole fleet, kept in Postgres (migration 0011, docs/scaling.md).

Before each Gemini request the worker makes ONE call, ``worker_gemini_acquire``: the answer is a
grant with the time to wait before sending (the fleet's requests are spaced by its rate), or a
refusal with how long until there is room. A refusal for the rate, or waiting longer than
``GEMINI_BUDGET_WAIT_SECONDS`` in all, becomes :class:`QuotaJobError`: the job is deferred, not
failed. The wait holds no Gemini connection. After the request, ``worker_gemini_release`` tells the
budget how it went: a success raises the fleet's rate, a 429 halves it and holds every worker
back for the ``retryDelay`` (AIMD).

:class:`BudgetedGenerator` wraps any :class:`~realtime_worker.generator.Generator`;
:class:`SupabaseBudget` is the adapter, through the queue's PostgREST RPC adapter.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import anyio
from loguru import logger

from realtime_worker.config import WorkerSettings
from realtime_worker.errors import JobError, QueueError, QuotaJobError, RetryableJobError
from realtime_worker.generator import GeneratedImage, GenerationRequest, Generator
from realtime_worker.queue import RpcCall

WAITING_MESSAGE = "Gemini's quota is busy; the page waits its turn"


@dataclass(frozen=True, kw_only=True)
class BudgetSettings:
    model: str
    rpm: float  # GEMINI_RPM: the fleet's ceiling
    max_concurrent: int  # GEMINI_MAX_CONCURRENT: requests in flight, fleet-wide
    max_wait_seconds: float = 30.0  # GEMINI_BUDGET_WAIT_SECONDS
    lease_seconds: int = 180  # a grant of a process that died is freed after this


def budget_settings(s: WorkerSettings) -> BudgetSettings:
    """The budget's limits from the worker's settings (GEMINI_RPM and its companions)."""
    return BudgetSettings(model=s.gemini_model, rpm=s.gemini_rpm,
                          max_concurrent=s.gemini_max_concurrent,
                          max_wait_seconds=s.gemini_budget_wait_seconds,
                          lease_seconds=math.ceil(s.gemini_timeout_seconds) + 60)


@dataclass(frozen=True)
class Prepaid:
    grant: str
    starts_at: float  # loop time: the request may start from here on


class PrepaidGrants:
    """Grants claimed with their jobs (``budget_claims``), until each job's first Gemini request
    takes its own.

    A run that lost its lease writes nothing, so its grant is never taken here: entries older
    than ``forget_after`` seconds are dropped (the grant's own lease freed it in the database).
    """

    def __init__(self, forget_after: float = 3600.0) -> None:
        self._by_job: dict[UUID, Prepaid] = {}
        self._forget_after = forget_after

    def put(self, job_id: UUID, grant: str, wait_seconds: float) -> None:
        now = anyio.current_time()
        if len(self._by_job) >= 1024:
            self._by_job = {j: p for j, p in self._by_job.items()
                            if p.starts_at > now - self._forget_after}
        self._by_job[job_id] = Prepaid(grant, now + max(wait_seconds, 0.0))

    def take(self, job_id: UUID | None) -> Prepaid | None:
        return self._by_job.pop(job_id, None) if job_id is not None else None

    def __len__(self) -> int:
        return len(self._by_job)


@dataclass(frozen=True)
class Answer:
    granted: bool
    wait_seconds: float
    grant: str | None = None
    reason: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> Answer:
        return cls(bool(data["granted"]), float(data["wait_seconds"]), data.get("grant"),
                   data.get("reason"))


class Budget(Protocol):
    async def acquire(self, settings: BudgetSettings, worker: str, max_wait: float) -> Answer: ...

    async def release(self, grant: str, outcome: str, retry_in_seconds: float | None) -> float | None: ...


class SupabaseBudget:
    """The budget's two functions over PostgREST RPC (``SupabaseQueue.call``)."""

    def __init__(self, rpc: RpcCall) -> None:
        self._rpc = rpc

    async def acquire(self, settings: BudgetSettings, worker: str, max_wait: float) -> Answer:
        return Answer.from_json(await self._rpc("worker_gemini_acquire", {
            "p_model": settings.model, "p_worker": worker, "p_rpm": settings.rpm,
            "p_max_concurrent": settings.max_concurrent, "p_max_wait_seconds": max_wait,
            "p_lease_seconds": settings.lease_seconds}))

    async def release(self, grant: str, outcome: str, retry_in_seconds: float | None) -> float | None:
        rate = await self._rpc("worker_gemini_release", {
            "p_grant": grant, "p_outcome": outcome, "p_retry_in_seconds": retry_in_seconds})
        return float(rate) if rate is not None else None


def outcome_of(error: JobError | None) -> str:
    """What the budget learns from a request: 'ok', 'rate_limited' (a 429) or 'error'."""
    if error is None:
        return "ok"
    return "rate_limited" if isinstance(error, QuotaJobError) else "error"


class BudgetedGenerator:
    """A generator that sends each request only with a grant of the fleet's budget."""

    def __init__(self, inner: Generator, budget: Budget, settings: BudgetSettings,
                 worker: str, prepaid: PrepaidGrants | None = None) -> None:
        self._inner, self._budget, self._s, self._worker = inner, budget, settings, worker
        self._prepaid = prepaid if prepaid is not None else PrepaidGrants()

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        grant, wait = await self._grant(request)
        error: JobError | None = None
        try:
            await anyio.sleep(wait)  # the grant's start time; cancelled, the grant is still freed
            return await self._inner.generate(request)
        except JobError as exc:
            error = exc
            raise
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._release(grant, error)

    async def _grant(self, request: GenerationRequest) -> tuple[str, float]:
        """The grant claimed with the request's job, else one asked for now; and the seconds
        until its start."""
        prepaid = self._prepaid.take(request.job_id)
        if prepaid is not None:
            return prepaid.grant, max(prepaid.starts_at - anyio.current_time(), 0.0)
        return await self._acquire()

    async def _acquire(self) -> tuple[str, float]:
        """A grant and the seconds until its start; QuotaJobError when there is no room in time."""
        deadline = time.monotonic() + self._s.max_wait_seconds
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            answer = await self._ask(left)
            if answer.granted and answer.grant is not None:
                return answer.grant, answer.wait_seconds
            if answer.reason == "rate" or answer.wait_seconds > left:
                raise QuotaJobError(WAITING_MESSAGE, code="rate_limited",
                                    retry_after=max(answer.wait_seconds, 1.0))
            await anyio.sleep(answer.wait_seconds)

    async def _ask(self, max_wait: float) -> Answer:
        try:
            return await self._budget.acquire(self._s, self._worker, max_wait)
        except QueueError as exc:
            logger.bind(event="budget_unavailable").warning(str(exc))
            raise RetryableJobError("The job queue could not be reached",
                                    code="database_unavailable") from exc

    async def _release(self, grant: str, error: JobError | None) -> None:
        outcome = outcome_of(error)
        retry = error.retry_after if error is not None else None
        try:
            rate = await self._budget.release(grant, outcome, retry)
        except QueueError as exc:  # the grant's lease frees it
            logger.bind(event="budget_release_failed").warning(str(exc))
            return
        if outcome == "rate_limited":
            logger.bind(event="budget_lowered", model=self._s.model, rate_rpm=rate,
                        hold_seconds=retry).warning("Gemini answered 429: the fleet slows down")

    async def aclose(self) -> None:
        await self._inner.aclose()
