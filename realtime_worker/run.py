"""One run of a claimed job: the processor under a time limit, the lease kept, the outcome written.

The dispatcher claims and judges; a :class:`JobRunner` does the rest for one :class:`JobRun`.
:meth:`JobRunner.attempt` calls the processor and returns its outcome (or None when the run was
stopped), then the dispatcher judges it (the configuration breaker) and :meth:`JobRunner.settle`
writes it, returning when the job is due again.

Every call about a job (heartbeat, complete, fail, release) names the owner its claim wrote into
``locked_by``, so the database refuses a write from any run but the one its current claim
started. Each running job keeps its lease with a heartbeat; a lost lease cancels the job and its
result is not written. The lease counts from when the last renewal that succeeded was *sent*, so
a run stops no later than the database could hand its job to someone else, even while renewals
hang. Final states are written in shielded, time-limited scopes so cancellation can never leave a
job half-recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import anyio
from loguru import logger

from realtime_worker.errors import ConfigurationJobError, JobError, QueueError, RetryableJobError
from realtime_worker.jobs import Job, JobResult
from realtime_worker.metrics import Metrics
from realtime_worker.queue import JobQueue
from realtime_worker.retry import RECORD_RETRY_DELAYS, Backoff, Defer, Fail, RetryPolicy

Outcome = JobResult | JobError


class Processor(Protocol):
    """Does one job; raises a JobError subclass to fail or retry it."""

    async def __call__(self, job: Job) -> JobResult: ...


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    worker_id: str
    lease_seconds: int
    backoff: Backoff = field(default_factory=Backoff)
    write_timeout_seconds: float = 5.0
    job_timeout_seconds: float = 300.0  # load, generate, render and upload together


@dataclass(frozen=True)
class Claim:
    """One claim request: the owner it writes into ``locked_by``, and when it was sent."""

    owner: str
    sent: float


@dataclass(eq=False)
class JobRun:
    job: Job
    source: str
    claim: Claim  # its owner in ``locked_by``, and when it was sent
    owned_until: float  # loop time: the lease may have run out from here on
    started: float = field(default_factory=anyio.current_time)
    scope: anyio.CancelScope | None = None
    stop_reason: str | None = None

    def stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason
        if self.scope is not None:
            self.scope.cancel()


def run_log(run: JobRun, worker_id: str):  # type: ignore[no-untyped-def]
    return logger.bind(job_id=str(run.job.id), attempt=run.job.attempts, worker=worker_id,
                       owner=run.claim.owner)


class JobRunner:
    def __init__(self, queue: JobQueue, processor: Processor, settings: RunSettings,
                 metrics: Metrics) -> None:
        self._queue, self._processor, self._s, self._metrics = queue, processor, settings, metrics
        self._policy = RetryPolicy(settings.backoff)

    async def attempt(self, run: JobRun) -> Outcome | None:
        """The processor's outcome, or None when the run was stopped before it had one.

        A cancelled run gives its job back (shielded, time-limited) and the cancellation goes on.
        """
        try:
            return await self._attempt(run)
        except anyio.get_cancelled_exc_class():
            with anyio.move_on_after(self._s.write_timeout_seconds, shield=True):
                await self._release(run, "cancelled")
            raise

    async def settle(self, run: JobRun, outcome: Outcome | None) -> int | None:
        """Write what the run came to; returns in how many seconds the job is due again, if it
        was put back for a retry."""
        with anyio.move_on_after(self._s.write_timeout_seconds, shield=True):
            if run.stop_reason == "lease_lost":  # even with an outcome: the job is not ours now
                self._metrics.released.labels("lease_lost").inc()
                self._log(run).bind(event="job_lease_lost").warning(
                    "lease lost; the result is discarded")
            elif outcome is not None:
                return await self._record(run, outcome)
            else:
                await self._release(run, run.stop_reason or "cancelled")
        return None

    async def _attempt(self, run: JobRun) -> Outcome | None:
        if run.stop_reason is not None:  # stopped before it started: the processor never runs
            return None
        with anyio.CancelScope() as run.scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_lease, run)
                outcome = await self._call(run)
                tg.cancel_scope.cancel()
            return outcome
        return None

    async def _call(self, run: JobRun) -> Outcome:
        """The processor's outcome; one that runs past ``job_timeout_seconds`` is stopped and
        becomes a retryable ``job_timeout`` (heartbeats alone would keep it running for ever)."""
        with anyio.move_on_after(self._s.job_timeout_seconds) as deadline:
            try:
                return await self._processor(run.job)
            except JobError as exc:
                return exc
            except Exception:
                if deadline.cancel_called:  # a library that turned the cancellation into an error
                    return self._timed_out(run)
                self._log(run).bind(event="job_crashed").exception("processor raised unexpectedly")
                return RetryableJobError(
                    "Something went wrong on our side", code="internal")
        return self._timed_out(run)

    def _timed_out(self, run: JobRun) -> RetryableJobError:
        self._metrics.timed_out.inc()
        self._log(run).bind(event="job_timed_out", timeout_seconds=self._s.job_timeout_seconds).warning(
            "the job ran past its time limit and was stopped")
        return RetryableJobError("Making the page took too long", code="job_timeout")

    async def _keep_lease(self, run: JobRun) -> None:
        """Renew the lease every third of it until the run ends or may no longer own its job.

        Renewals keep a steady beat: one that fails or hangs is given up when the next is due.
        The run stops as ``lease_lost`` when the database refuses a renewal, or when the lease
        of the last renewal that succeeded (counted from when it was sent) runs out.
        """
        interval = max(self._s.lease_seconds / 3, 0.2)
        # A claim answered late has used part of its lease already: renew in time, or at once.
        due = min(anyio.current_time() + interval, run.owned_until - interval)
        while True:
            await anyio.sleep(max(min(due, run.owned_until) - anyio.current_time(), 0))
            sent = anyio.current_time()
            if sent >= run.owned_until:
                self._log(run).bind(event="lease_expired").warning(
                    "the lease ran out while renewals failed; the run stops")
                run.stop("lease_lost")
                return
            due = sent + interval
            if not await self._renew(run, sent, min(due, run.owned_until) - sent):
                return

    async def _renew(self, run: JobRun, sent: float, patience: float) -> bool:
        """One heartbeat given ``patience`` seconds; False once the database refused it."""
        owned = None
        with anyio.move_on_after(patience):
            try:
                owned = await self._queue.heartbeat(run.job.id, run.claim.owner, self._s.lease_seconds)
            except QueueError as exc:
                self._log(run).bind(event="heartbeat_failed").warning(str(exc))
        if owned is False:
            run.stop("lease_lost")
            return False
        if owned:
            run.owned_until = sent + self._s.lease_seconds
        return True

    async def _record(self, run: JobRun, outcome: Outcome) -> int | None:
        """Write the outcome, retrying through a short database outage.

        Every call is safe to repeat; the caller's time limit bounds the retries. If it runs
        out, the lease expires and the job is retried (its result is lost, never doubled).
        """
        for delay in RECORD_RETRY_DELAYS:
            try:
                if isinstance(outcome, JobResult):
                    await self._complete(run, outcome)
                elif isinstance(outcome, ConfigurationJobError):
                    await self._give_back(run, outcome)
                else:
                    return await self._fail(run, outcome)
                return None
            except QueueError as exc:
                self._log(run).bind(event="record_failed").warning(
                    f"could not record the outcome, trying again in {delay} s: {exc}")
                await anyio.sleep(delay)
        return None

    async def _complete(self, run: JobRun, result: JobResult) -> None:
        log = self._log(run)
        if await self._queue.complete(run.job.id, run.claim.owner, result):
            self._metrics.succeeded.inc()
            log.bind(event="job_succeeded", model=result.model, cost_cents=result.cost_cents,
                     duration_ms=round((anyio.current_time() - run.started) * 1000)).info("job succeeded")
        else:
            log.bind(event="job_complete_refused").warning("completion refused: lease lost")

    async def _fail(self, run: JobRun, error: JobError) -> int | None:
        """Fail the job or put it back (a Defer, until the queue can record one, is a Retry)."""
        job = run.job
        decision = self._policy.decide(error, job.attempts, job.max_attempts)
        if isinstance(decision, Defer):
            return await self._defer(run, error, decision.after)
        delay = None if isinstance(decision, Fail) else decision.after
        status = await self._queue.fail(job.id, run.claim.owner, error.user_message, error.code, delay)
        log = self._log(run).bind(error_code=error.code, retry_in_seconds=delay)
        if status == "queued":
            self._metrics.retried.labels(error.code).inc()
            log.bind(event="job_retry_scheduled").warning(f"retry scheduled: {error.user_message}")
            return delay
        if status == "failed":
            self._metrics.failed.labels(error.code).inc()
            log.bind(event="job_failed").warning(f"job failed: {error.user_message}")
        else:
            log.bind(event="job_fail_refused").warning("failure not recorded: lease lost")
        return None

    async def _defer(self, run: JobRun, error: JobError, delay: int) -> int | None:
        """Gemini's quota had no room: back to the queue when Gemini said, the attempt not
        counted; the job fails (refunded) only when its budget of deferrals is spent."""
        status = await self._queue.defer(run.job.id, run.claim.owner, error.user_message, error.code, delay)
        log = self._log(run).bind(error_code=error.code, retry_in_seconds=delay)
        if status == "queued":
            self._metrics.deferred.labels(error.code).inc()
            log.bind(event="job_deferred").info(f"deferred: {error.user_message}")
            return delay
        if status == "failed":
            self._metrics.failed.labels(error.code).inc()
            log.bind(event="job_failed").warning(f"job failed, deferred too often: {error.user_message}")
        else:
            log.bind(event="job_defer_refused").warning("deferral not recorded: lease lost")
        return None

    async def _give_back(self, run: JobRun, error: ConfigurationJobError) -> None:
        """Not the job's fault: back to the queue, the attempt not counted, nothing refunded.
        A failed call raises, so :meth:`_record` tries again."""
        if not await self._released(run, "config_error", error_code=error.code):
            self._log(run).bind(event="job_release_refused", error_code=error.code).warning(
                "give-back refused: lease lost")

    async def _release(self, run: JobRun, reason: str) -> None:
        try:
            await self._released(run, reason)
        except QueueError as exc:
            self._log(run).bind(event="release_failed").error(str(exc))

    async def _released(self, run: JobRun, reason: str, **context: str) -> bool:
        """Give the job back (``worker_release_job``), counted and logged under ``reason``."""
        if not await self._queue.release(run.job.id, run.claim.owner):
            return False
        self._metrics.released.labels(reason).inc()
        self._log(run).bind(event="job_released", reason=reason, **context).info("job given back")
        return True

    def _log(self, run: JobRun):  # type: ignore[no-untyped-def]
        return run_log(run, self._s.worker_id)
