"""The dispatcher: claims jobs while there is capacity and runs each one in the task group.

Wake-ups come from the listener (with a job id), the sweeper, catch-ups after a resubscription
and freed slots (without one). They pass through a bounded buffer; a full buffer drops the
wake-up, never a job, because the next fill claims whatever is due. A slot is taken *before*
a claim, so nothing is claimed that cannot start.

Every claim request writes its own owner into ``locked_by`` (:func:`~realtime_worker.jobs.lease_owner`:
the worker id, a token of this process and the claim's number), and every later call about
a job (heartbeat, complete, fail, release) names that owner. So the database refuses a write
from any run but the one its current claim started: a run of another instance that happens to
share the worker id, or an earlier run in this very process whose lease ran out.

Each job runs in a :class:`~realtime_worker.run.JobRunner`, which keeps its lease, limits its
time and writes its outcome; the runner returns the outcome to the dispatcher, which judges it.

Time is the event loop's (``anyio.current_time``; on asyncio it is ``time.monotonic``) for the
dispatcher, its runs and its timer alike: every read agrees with every sleep and timeout, so a
test loop with virtual time (:class:`~realtime_worker.testing.VirtualTimeLoop`) drives them all
without waiting.

When Gemini refuses the worker's own configuration (:class:`ConfigurationJobError`: a bad or
revoked key, lapsed billing, a region, a retired model), the job is not at fault and every other
job would fail the same way. So the job is given back (the attempt not counted, nothing refunded)
and :class:`ConfigBreaker` stops all claiming for a cool-down that doubles while the refusals go
on; running jobs go on. When the cool-down ends the dispatcher wakes itself and claims again.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

import anyio
from anyio.abc import TaskGroup, TaskStatus
from loguru import logger

from realtime_worker.errors import ConfigurationJobError, QueueError
from realtime_worker.jobs import Job, JobResult, lease_owner
from realtime_worker.metrics import Metrics
from realtime_worker.pause import ConfigBreaker, PauseSettings, PauseStatus
from realtime_worker.queue import JobQueue
from realtime_worker.retry import Backoff
from realtime_worker.run import Claim, JobRun, JobRunner, Outcome, Processor, RunSettings, run_log
from realtime_worker.timer import WakeTimer


@dataclass(frozen=True)
class Wakeup:
    job_id: UUID | None
    source: str


@dataclass(frozen=True, kw_only=True)
class DispatcherSettings:
    worker_id: str
    max_concurrent_jobs: int
    lease_seconds: int
    shutdown_grace_seconds: float = 8.0
    backoff: Backoff = field(default_factory=Backoff)
    hint_buffer: int = 1024
    write_timeout_seconds: float = 5.0
    job_timeout_seconds: float = 300.0  # load, generate, render and upload together
    config_pause: PauseSettings = field(default_factory=PauseSettings)

    @property
    def run(self) -> RunSettings:
        return RunSettings(worker_id=self.worker_id, lease_seconds=self.lease_seconds,
                           backoff=self.backoff, write_timeout_seconds=self.write_timeout_seconds,
                           job_timeout_seconds=self.job_timeout_seconds)


class Slots:
    """Capacity counter; single event-loop thread, so plain integers suffice."""

    def __init__(self, total: int) -> None:
        self.free = total

    def take(self, wanted: int = 1) -> int:
        got = min(wanted, self.free)
        self.free -= got
        return got

    def give(self, count: int = 1) -> None:
        self.free += count


class Dispatcher:
    def __init__(self, queue: JobQueue, processor: Processor, settings: DispatcherSettings,
                 metrics: Metrics) -> None:
        self._queue, self._processor, self._s, self._metrics = queue, processor, settings, metrics
        self._send, self._receive = anyio.create_memory_object_stream[Wakeup](settings.hint_buffer)
        self._slots = Slots(settings.max_concurrent_jobs)
        self._running: dict[UUID, JobRun] = {}
        self._maybe_more = False
        self._stopping = False
        self._grace_over = False
        self._changed = anyio.Event()
        self._claims = 0  # claim requests awaiting their answer
        self._claims_answered = anyio.Event()
        self._claims_answered.set()
        self._tg: TaskGroup | None = None
        self._process_token = secrets.token_hex(4)
        self._claim_numbers = itertools.count(1)
        self._breaker = ConfigBreaker(settings.config_pause, anyio.current_time)
        self._serving = False  # run(), not drain(): the end of a pause wakes the loop
        self._resume: anyio.CancelScope | None = None
        self._retry_timer = WakeTimer(lambda: self.wake(None, "retry_due"))
        self._room_in: float | None = None  # drain(): seconds until the budget has room again
        self._stop_asked = anyio.Event()
        self._runner = JobRunner(queue, processor, settings.run, metrics)
        self.last_tick = anyio.current_time()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def pause_status(self) -> PauseStatus | None:
        """The pause after a configuration error, while it lasts."""
        return self._breaker.status()

    def wake(self, job_id: UUID | None = None, source: str = "sweep") -> None:
        """Ask for a claim; never blocks, never raises (safe from any callback)."""
        if self._stopping:
            return
        try:
            self._send.send_nowait(Wakeup(job_id, source))
        except anyio.WouldBlock:
            self._metrics.hints_dropped.inc()
            self._maybe_more = True
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve wake-ups until :meth:`shutdown`; returns when every job has ended."""
        async with anyio.create_task_group() as tg:
            self._tg, self._serving = tg, True
            task_status.started()
            async with self._receive:
                async for wakeup in self._receive:
                    self.last_tick = anyio.current_time()
                    await self._handle([wakeup, *self._pending()])

    async def drain(self) -> None:
        """Claim and run every due job, then return (``--once``)."""
        self._send.close()
        self._receive.close()
        async with anyio.create_task_group() as tg:
            self._tg = tg
            while not self._stopping:
                changed = self._changed  # set by any job that ends from now on
                self._take_room_hint()  # only this round's claim counts
                claimed = await self._fill("once")
                if not self._running and not claimed:
                    room_in = self._take_room_hint()
                    if room_in is None:
                        break
                    # The fleet's budget held due jobs back: they are due all the same.
                    with anyio.move_on_after(room_in):
                        await self._stop_asked.wait()
                else:
                    await changed.wait()
                self.last_tick = anyio.current_time()

    def _take_room_hint(self) -> float | None:
        room_in, self._room_in = self._room_in, None
        return room_in

    async def shutdown(self) -> None:
        """Stop claiming, give running jobs the grace period, then cancel and release them.

        A claim whose answer is still on its way holds jobs the database already shows running:
        they get what is left of the grace period too, and if the answer comes after it, they are
        given back without being started.
        """
        self._stopping = True
        self._stop_asked.set()
        self._send.close()
        if self._resume is not None:
            self._resume.cancel()
        self._retry_timer.cancel()
        with anyio.move_on_after(self._s.shutdown_grace_seconds):
            await self._claims_answered.wait()
            await self.wait_idle()
        self._grace_over = True
        for run in list(self._running.values()):
            run.stop("shutdown")

    async def wait_idle(self) -> None:
        while self._running:
            await self._changed.wait()

    def _pending(self) -> list[Wakeup]:
        pending = []
        while True:
            try:
                pending.append(self._receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return pending

    async def _handle(self, wakeups: list[Wakeup]) -> None:
        hinted = list(dict.fromkeys(w.job_id for w in wakeups if w.job_id is not None))
        fills = [w.source for w in wakeups if w.job_id is None]
        if len(hinted) == 1:
            await self._claim_hinted(hinted[0])
        elif hinted:  # a burst: one batch claim instead of a request per announced job
            fills.insert(0, "realtime")
        if fills:
            await self._fill(fills[0])

    async def _claim_hinted(self, job_id: UUID) -> None:
        if self._stopping or self._breaker.paused:
            return
        if not self._slots.take():
            self._maybe_more = True
            return
        try:
            with self._claiming() as claim:
                job = await self._queue.claim_job(job_id, claim.owner, self._s.lease_seconds)
        except QueueError as exc:
            logger.bind(event="claim_failed", job_id=str(job_id)).warning(str(exc))
            job = None
        if job is None:
            self._slots.give()
            return
        self._start(job, "realtime", claim)

    async def _fill(self, source: str) -> int:
        """Claim due jobs into every free slot; returns how many were claimed."""
        claimed = 0
        while not self._stopping and not self._breaker.paused:
            wanted = self._slots.take(self._slots.free)
            if wanted == 0:
                self._maybe_more = True
                break
            try:
                with self._claiming() as claim:
                    jobs = await self._queue.claim_jobs(claim.owner, wanted, self._s.lease_seconds)
            except QueueError as exc:
                self._slots.give(wanted)
                logger.bind(event="claim_failed").warning(str(exc))
                break
            self._slots.give(wanted - len(jobs))
            for job in jobs:
                self._start(job, source, claim)
            claimed += len(jobs)
            if len(jobs) < wanted:
                self._maybe_more = False
                break
        return claimed

    @contextmanager
    def _claiming(self) -> Iterator[Claim]:
        """A claim request is out; :meth:`shutdown` waits for its answer."""
        if self._claims == 0:
            self._claims_answered = anyio.Event()
        self._claims += 1
        owner = lease_owner(self._s.worker_id, f"{self._process_token}.{next(self._claim_numbers)}")
        try:
            yield Claim(owner, anyio.current_time())
        finally:
            self._claims -= 1
            if self._claims == 0:
                self._claims_answered.set()

    def _start(self, job: Job, source: str, claim: Claim) -> None:
        assert self._tg is not None
        self._metrics.claimed.labels(source).inc()
        if job.created_at is not None:
            pickup = (datetime.now(UTC) - job.created_at).total_seconds()
            self._metrics.pickup.observe(max(pickup, 0.0))
        run = JobRun(job, source, claim, claim.sent + self._s.lease_seconds)
        if self._grace_over:  # claimed before the shutdown, answered after its grace period
            run.stop("shutdown")
        stale = self._running.get(job.id)
        if stale is not None:
            # The database handed out a job this worker still runs: that run's claim is gone
            # (its lease ran out while heartbeats failed, and a sweep put the job back). The new
            # claim is the one that counts; the stale run stops without writing anything.
            self._log(stale).bind(event="job_claimed_again").warning(
                "claimed again while an earlier run was still going; the earlier run stops")
            stale.stop("lease_lost")
        self._running[job.id] = run
        self._metrics.in_flight.inc()
        self._tg.start_soon(self._run_job, run, name=f"job {job.id}")

    async def _run_job(self, run: JobRun) -> None:
        log = self._log(run)
        log.bind(event="job_started", source=run.source).info("job started")
        try:
            await self._execute(run)
        finally:
            if self._running.get(run.job.id) is run:
                del self._running[run.job.id]
            self._metrics.in_flight.dec()
            self._metrics.duration.observe(anyio.current_time() - run.started)
            self._slots.give()
            self._changed.set()  # wakes every waiter of this round; the next round gets a new one
            self._changed = anyio.Event()
            if self._maybe_more and not self._stopping:
                self.wake(None, "backlog")

    async def _execute(self, run: JobRun) -> None:
        outcome = await self._runner.attempt(run)
        if outcome is not None:  # even when the lease is lost: it still tells about Gemini
            self._judge(run, outcome)
        self._due_again(await self._runner.settle(run, outcome))

    def _judge(self, run: JobRun, outcome: Outcome) -> None:
        """Tell the breaker: a configuration error pauses claiming, a job that went through
        resets it. Other failures say nothing about the configuration (bad input, a Storage
        outage, refused content may come before or without a Gemini call that works)."""
        if isinstance(outcome, JobResult):
            self._breaker.clear(run.claim.sent)
            return
        if not isinstance(outcome, ConfigurationJobError):
            return
        cool_down = self._breaker.trip(outcome.code, run.claim.sent)
        if cool_down is None:  # a run claimed before the pause began: part of it
            return
        self._metrics.config_pauses.labels(outcome.code).inc()
        self._log(run).bind(event="claims_paused", error_code=outcome.code,
                            cool_down_seconds=cool_down, in_flight=len(self._running)).critical(
            f"Gemini refused the worker's configuration ({outcome.code}): no claims for "
            f"{cool_down:g} s; queued jobs wait and nothing is refunded. Fix the API key, "
            "billing, region or GEMINI_MODEL")
        self._schedule_resume(cool_down)

    def _schedule_resume(self, cool_down: float) -> None:
        """While serving, wake the loop when this pause ends (``drain`` just returns).

        The latest pause's timer replaces an earlier one; shutdown cancels it.
        """
        if not self._serving or self._stopping or self._tg is None:
            return
        if self._resume is not None:
            self._resume.cancel()
        self._resume = anyio.CancelScope()
        self._tg.start_soon(self._resume_after, self._resume, cool_down, name="resume after pause")

    async def _resume_after(self, scope: anyio.CancelScope, cool_down: float) -> None:
        with scope:
            await anyio.sleep(cool_down)  # started after the trip: ends no earlier than the pause
            logger.bind(event="claims_resumed", worker=self._s.worker_id).info(
                "the pause is over: claiming again")
            self.wake(None, "resume")

    def wake_in(self, delay: float) -> None:
        """Claim again in ``delay`` seconds (the fleet's Gemini budget has room then)."""
        if not self._serving:
            self._room_in = delay  # drain() waits for it once nothing runs
        self._due_again(delay)

    def _due_again(self, delay: float | None) -> None:
        """While serving, claim a job put back for a retry when it is due, not at the next sweep
        (``run_after`` was set from the database's clock when the call began: a little earlier)."""
        if self._serving and not self._stopping and self._tg is not None and delay is not None:
            self._retry_timer.arm(self._tg, delay)

    def _log(self, run: JobRun):  # type: ignore[no-untyped-def]
        return run_log(run, self._s.worker_id)
