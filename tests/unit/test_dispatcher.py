"""The dispatcher's rules, on the in-memory queue shipped in realtime_worker.testing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from uuid import UUID

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import TaskStatus
from loguru import logger

from realtime_worker.dispatcher import Dispatcher, DispatcherSettings
from realtime_worker.errors import ConfigurationJobError, QueueError
from realtime_worker.jobs import Job, JobResult, JobStatus, lease_owner, worker_of
from realtime_worker.metrics import Metrics
from realtime_worker.pause import PauseSettings
from realtime_worker.retry import Backoff
from realtime_worker.testing import InMemoryQueue, LoopClock, ScriptedProcessor, VirtualTimeLoop
from tests.helpers import sample
from tests.waiting import wait_for

pytestmark = pytest.mark.unit


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    """Virtual time: sleeps, leases, timeouts and cool-downs pass without waiting (the queue's
    clock is the loop's, see ``LoopClock``)."""
    return "asyncio", {"loop_factory": VirtualTimeLoop}


def make(queue: InMemoryQueue, processor: object, *, slots: int = 2, lease: int = 30,
         grace: float = 0.5, buffer: int = 16, pause: PauseSettings | None = None,
         metrics: Metrics | None = None) -> Dispatcher:
    settings = DispatcherSettings(worker_id="w1", max_concurrent_jobs=slots, lease_seconds=lease,
                                  shutdown_grace_seconds=grace, backoff=Backoff(base_seconds=60),
                                  hint_buffer=buffer, config_pause=pause or PauseSettings())
    return Dispatcher(queue, processor, settings, metrics or Metrics())  # type: ignore[arg-type]


class Gauge:
    """A processor that records how many jobs run at once."""

    def __init__(self, duration: float = 0.05) -> None:
        self.now = self.peak = 0
        self.duration = duration
        self.done: list[UUID] = []

    async def __call__(self, job: Job) -> JobResult:
        self.now += 1
        self.peak = max(self.peak, self.now)
        await anyio.sleep(self.duration)
        self.now -= 1
        self.done.append(job.id)
        return JobResult(model="m", cost_cents=1)


async def test_drain_runs_every_due_job_within_capacity() -> None:
    queue, gauge = InMemoryQueue(LoopClock()), Gauge()
    ids = [queue.add() for _ in range(9)]
    with anyio.fail_after(5):
        await make(queue, gauge, slots=3).drain()
    assert sorted(gauge.done) == sorted(ids)
    assert gauge.peak == 3
    assert all(queue.status(i) == JobStatus.SUCCEEDED for i in ids)


async def test_hint_claims_the_named_job_without_a_fill() -> None:
    queue, gauge = InMemoryQueue(LoopClock()), Gauge(0)
    job_id = queue.add()
    dispatcher = make(queue, gauge)
    async with anyio.create_task_group() as tg:
        await tg.start(dispatcher.run)
        dispatcher.wake(job_id, "realtime")
        with anyio.fail_after(5):
            await wait_for(lambda: queue.status(job_id) == JobStatus.SUCCEEDED)
        await dispatcher.shutdown()
    assert queue.calls[:2] == ["claim_job", "complete"]
    assert "claim_jobs" not in queue.calls


async def test_failures_are_classified() -> None:
    queue = InMemoryQueue(LoopClock())
    retry = queue.add({"script": {"fail": "retryable", "retry_after": 120}})
    permanent = queue.add({"script": {"fail": "permanent"}})
    crash = queue.add({"script": {"fail": "crash"}})
    last_try = queue.add({"script": {"fail": "retryable"}}, max_attempts=1)
    with anyio.fail_after(5):
        await make(queue, ScriptedProcessor(), slots=4).drain()
    assert queue.status(retry) == JobStatus.QUEUED
    assert queue.jobs[retry].run_after > queue.jobs[retry].job.created_at  # type: ignore[operator]
    assert queue.status(permanent) == JobStatus.FAILED and queue.jobs[permanent].refunds == 1
    assert queue.jobs[permanent].error == "Scripted permanent failure"
    assert queue.status(crash) == JobStatus.QUEUED
    assert queue.jobs[crash].error == "Something went wrong on our side"
    assert queue.status(last_try) == JobStatus.FAILED and queue.jobs[last_try].refunds == 1


async def test_a_429_defers_the_job_without_counting_the_attempt() -> None:
    queue, metrics = InMemoryQueue(), Metrics()
    limited = queue.add({"script": {"fail": "quota", "retry_after": 7.2}}, max_attempts=1)
    with anyio.fail_after(5):
        await make(queue, ScriptedProcessor(), metrics=metrics).drain()
    item = queue.jobs[limited]
    assert (item.job.status, item.job.attempts, item.deferrals, item.refunds) == (
        JobStatus.QUEUED, 0, 1, 0)
    assert item.error_code == "rate_limited"
    assert 7 < (item.run_after - queue.clock.now()).total_seconds() <= 8  # RetryInfo, rounded up
    assert queue.calls.count("defer") == 1 and "fail" not in queue.calls
    assert sample(metrics, "worker_jobs_deferred_total", code="rate_limited") == 1


async def test_lost_lease_cancels_the_job_and_discards_its_result() -> None:
    queue = InMemoryQueue(LoopClock())
    job_id = queue.add({"script": {"duration": 30}})
    processor = ScriptedProcessor()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(make(queue, processor, lease=3).drain)
            await wait_for(lambda: queue.status(job_id) == JobStatus.RUNNING)
            item = queue.jobs[job_id]
            item.job = replace(item.job, locked_by="someone-else")  # another worker took it over
    assert processor.calls[job_id] == 1
    assert item.results == [] and "complete" not in queue.calls


async def test_shutdown_releases_unfinished_jobs_without_counting_the_attempt() -> None:
    queue = InMemoryQueue(LoopClock())
    slow = queue.add({"script": {"duration": 60}})
    quick = queue.add({"script": {"duration": 0.1}})
    dispatcher = make(queue, ScriptedProcessor(), grace=0.5)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run)
            dispatcher.wake(None, "sweep")
            await wait_for(lambda: queue.status(slow) == JobStatus.RUNNING)
            await dispatcher.shutdown()
    assert queue.status(quick) == JobStatus.SUCCEEDED
    assert queue.status(slow) == JobStatus.QUEUED
    assert queue.jobs[slow].job.attempts == 0
    assert "release" in queue.calls


async def test_a_job_handed_out_again_stops_its_stale_run_and_runs_once() -> None:
    """The database may hand a job this worker still runs back to it: heartbeats failed for a
    whole lease, a sweep put the job back in the queue, and this worker's next claim took it.
    The new claim wins: the stale run stops without writing anything, and one run remains."""
    queue, processor = InMemoryQueue(LoopClock()), ScriptedProcessor()
    job_id = queue.add({"script": {"duration": 60}})
    dispatcher = make(queue, processor)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run)
            dispatcher.wake(job_id, "realtime")
            await wait_for(lambda: processor.calls.get(job_id) == 1)
            item = queue.jobs[job_id]  # what the reaper does to an expired lease:
            item.job = replace(item.job, status=JobStatus.QUEUED, locked_by=None,
                               params={"script": {"duration": 0.05}})
            dispatcher.wake(job_id, "sweep")
            await wait_for(lambda: queue.status(job_id) == JobStatus.SUCCEEDED)
            await wait_for(lambda: dispatcher.in_flight == 0)
            await dispatcher.shutdown()
    assert processor.calls[job_id] == 2
    assert len(queue.jobs[job_id].results) == 1 and queue.jobs[job_id].job.attempts == 2
    assert "release" not in queue.calls  # the stale run had nothing left to give back


class SlowAnswer(InMemoryQueue):
    """Claims commit at once, but their answer reaches the worker only when ``answer`` is set:
    a SIGTERM can arrive while the database already shows the jobs running."""

    def __init__(self) -> None:
        super().__init__(LoopClock())
        self.answer = anyio.Event()
        self.claimed = anyio.Event()

    async def claim_jobs(self, worker: str, limit: int, lease_seconds: int) -> list[Job]:
        jobs = await super().claim_jobs(worker, limit, lease_seconds)
        self.claimed.set()
        await self.answer.wait()
        return jobs


async def test_jobs_whose_claim_is_answered_during_the_grace_period_get_it_too() -> None:
    queue = SlowAnswer()
    slow = queue.add({"script": {"duration": 60}})
    quick = queue.add({"script": {"duration": 0.1}})
    dispatcher = make(queue, ScriptedProcessor(), grace=1.0)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run)
            dispatcher.wake(None, "sweep")
            await queue.claimed.wait()  # both jobs are running as far as the database knows
            tg.start_soon(dispatcher.shutdown)
            await anyio.sleep(0.1)
            queue.answer.set()
    assert queue.status(quick) == JobStatus.SUCCEEDED
    assert queue.status(slow) == JobStatus.QUEUED
    assert queue.jobs[slow].job.attempts == 0


async def test_jobs_whose_claim_is_answered_after_the_grace_period_are_given_back_unstarted() -> None:
    queue, processor = SlowAnswer(), ScriptedProcessor()
    ids = [queue.add({"script": {"duration": 0.1}}) for _ in range(2)]
    dispatcher = make(queue, processor, grace=0.2)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run)
            dispatcher.wake(None, "sweep")
            await queue.claimed.wait()
            await dispatcher.shutdown()  # the grace period ends with the claim unanswered
            queue.answer.set()
    assert [queue.status(i) for i in ids] == [JobStatus.QUEUED] * 2
    assert [queue.jobs[i].job.attempts for i in ids] == [0, 0]
    assert processor.calls == {}


async def test_full_hint_buffer_drops_hints_not_jobs() -> None:
    queue, gauge = InMemoryQueue(LoopClock()), Gauge(0.01)
    ids = [queue.add() for _ in range(40)]
    dispatcher = make(queue, gauge, slots=2, buffer=2)
    for job_id in ids:
        dispatcher.wake(job_id, "realtime")  # the loop is not running yet: most are dropped
    async with anyio.create_task_group() as tg:
        await tg.start(dispatcher.run)
        with anyio.fail_after(5):
            await wait_for(lambda: len(gauge.done) == len(ids))
        await dispatcher.shutdown()
    assert sorted(gauge.done) == sorted(ids)
    assert gauge.peak <= 2


async def test_a_burst_of_hints_is_claimed_in_batches() -> None:
    queue, gauge = InMemoryQueue(LoopClock()), Gauge(0.01)
    ids = [queue.add() for _ in range(8)]
    dispatcher = make(queue, gauge, slots=8)
    for job_id in ids:
        dispatcher.wake(job_id, "realtime")  # queued up before the loop runs: one burst
    async with anyio.create_task_group() as tg:
        await tg.start(dispatcher.run)
        await wait_for(lambda: len(gauge.done) == len(ids))
        await dispatcher.shutdown()
    assert queue.calls.count("claim_job") == 0
    # one batch for the burst, one more once slots free up (the batch was full: there may be more)
    assert queue.calls.count("claim_jobs") == 2


class FlakyQueue(InMemoryQueue):
    """The database is unreachable for the first ``outage`` completion attempts."""

    def __init__(self, outage: int) -> None:
        super().__init__(LoopClock())
        self.outage = outage

    async def complete(self, job_id: UUID, worker: str, result: JobResult) -> bool:
        if self.outage > 0:
            self.outage -= 1
            self.calls.append("complete (unreachable)")
            raise QueueError("worker_complete_job failed: 57P03 the database system is starting up")
        return await super().complete(job_id, worker, result)


async def test_outcome_is_recorded_through_a_short_database_outage() -> None:
    queue = FlakyQueue(outage=2)
    job_id = queue.add()
    with anyio.fail_after(10):
        await make(queue, ScriptedProcessor()).drain()
    assert queue.status(job_id) == JobStatus.SUCCEEDED
    assert queue.calls.count("complete (unreachable)") == 2


async def test_a_longer_outage_leaves_the_job_to_its_lease() -> None:
    queue = FlakyQueue(outage=100)
    job_id = queue.add()
    with anyio.fail_after(15):
        await make(queue, ScriptedProcessor()).drain()
    assert queue.status(job_id) == JobStatus.RUNNING  # the lease expires; a sweep reaps it
    assert queue.jobs[job_id].results == []


class HangingRenewals(InMemoryQueue):
    """Every heartbeat hangs, as over a connection that stopped answering."""

    async def heartbeat(self, job_id: UUID, worker: str, lease_seconds: int) -> bool:
        self.calls.append("heartbeat (hangs)")
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


async def test_a_run_whose_renewals_hang_stops_when_its_lease_may_have_run_out() -> None:
    """A renewal that never answers must not keep a job running past its lease: by then the
    database may have handed the job to another worker."""
    queue, processor = HangingRenewals(), ScriptedProcessor()
    job_id = queue.add({"script": {"duration": 60}})
    dispatcher = make(queue, processor, lease=3)
    with anyio.fail_after(3 + 2):  # the lease, plus room for the stop (correctness, not speed)
        await dispatcher.drain()
    assert processor.calls[job_id] == 1
    assert queue.calls.count("heartbeat (hangs)") >= 2  # a hung renewal is retried, not awaited
    assert queue.jobs[job_id].results == [] and "complete" not in queue.calls
    assert "release" not in queue.calls  # the job is not ours to give back any more


class Numbered:
    """A processor whose result names its call; the ``hold``-th call waits for ``go``."""

    def __init__(self, hold: int) -> None:
        self.count, self.hold, self.go = 0, hold, anyio.Event()

    async def __call__(self, job: Job) -> JobResult:
        self.count += 1
        number = self.count
        if number == self.hold:
            await self.go.wait()
        return JobResult(model=f"run {number}", cost_cents=number)


class Outage(InMemoryQueue):
    """Completions fail while ``down`` is set."""

    def __init__(self) -> None:
        super().__init__(LoopClock())
        self.down = True

    async def complete(self, job_id: UUID, worker: str, result: JobResult) -> bool:
        if self.down:
            self.calls.append("complete (unreachable)")
            raise QueueError("worker_complete_job failed: 57P03 the database system is starting up")
        self.calls.append(f"complete {result.model}")
        return await super().complete(job_id, worker, result)


async def test_a_stale_run_still_recording_cannot_write_over_a_new_claim_of_its_job() -> None:
    """Run 1 finished but cannot record its result (the database is away); meanwhile its lease
    ran out, a sweep put the job back and this same worker claimed it again (run 2). When the
    database is back, run 1's retry must be refused: only run 2's claim owns the job."""
    queue, processor = Outage(), Numbered(hold=2)
    job_id = queue.add()
    dispatcher = make(queue, processor)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run)
            dispatcher.wake(job_id, "realtime")
            await wait_for(lambda: "complete (unreachable)" in queue.calls)
            item = queue.jobs[job_id]  # what the reaper does to an expired lease:
            item.job = replace(item.job, status=JobStatus.QUEUED, locked_by=None)
            dispatcher.wake(job_id, "sweep")
            await wait_for(lambda: processor.count == 2)
            queue.down = False
            await wait_for(lambda: "complete run 1" in queue.calls)  # run 1's retry, refused
            assert queue.status(job_id) == JobStatus.RUNNING and item.results == []
            processor.go.set()
            await wait_for(lambda: queue.status(job_id) == JobStatus.SUCCEEDED)
            await dispatcher.shutdown()
    assert [result.model for result in item.results] == ["run 2"]
    assert item.job.attempts == 2


async def test_two_instances_sharing_a_worker_id_never_both_own_a_job() -> None:
    """On Cloud Run every instance may be ``localhost-1``. When one instance's lease ran out and
    the other claimed the job, the first one's next renewal must be refused, not accepted as its
    own: each claim writes its own owner."""
    queue = InMemoryQueue(LoopClock())
    job_id = queue.add({"script": {"duration": 60}})
    first, second = ScriptedProcessor(), ScriptedProcessor()
    old, new = make(queue, first, lease=3), make(queue, second, lease=3)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(old.run)
            await tg.start(new.run)
            old.wake(job_id, "realtime")
            await wait_for(lambda: first.calls.get(job_id) == 1)
            item = queue.jobs[job_id]  # the reaper takes the lease back; the other instance claims
            item.job = replace(item.job, status=JobStatus.QUEUED, locked_by=None)
            new.wake(job_id, "sweep")
            await wait_for(lambda: second.calls.get(job_id) == 1)
            await wait_for(lambda: old.in_flight == 0)  # its next renewal was refused
            assert new.in_flight == 1 and queue.status(job_id) == JobStatus.RUNNING
            await new.shutdown()
            await old.shutdown()
    assert queue.status(job_id) == JobStatus.QUEUED  # given back by its owner only
    assert item.job.locked_by is None and item.results == []


def test_an_owner_names_its_worker() -> None:
    assert worker_of(lease_owner("localhost-1", "9f3a.7")) == "localhost-1"
    assert worker_of(lease_owner("a#b", "c")) == "a#b"
    assert worker_of("written-by-an-older-worker") == "written-by-an-older-worker"


# --- a broken configuration pauses claiming -------------------------------------------------


class Revoked:
    """Answers like Gemini with a revoked key while ``broken`` is set, then draws."""

    def __init__(self) -> None:
        self.broken = True
        self.calls: list[UUID] = []

    async def __call__(self, job: Job) -> JobResult:
        self.calls.append(job.id)
        await anyio.lowlevel.checkpoint()
        if self.broken:
            raise ConfigurationJobError("The image service is not configured correctly",
                                        code="gemini_auth")
        return JobResult(model="m", cost_cents=1)


class TimedQueue(InMemoryQueue):
    """Notes when each claim request was made."""

    def __init__(self) -> None:
        super().__init__(LoopClock())
        self.claim_times: list[float] = []

    async def claim_jobs(self, worker: str, limit: int, lease_seconds: int) -> list[Job]:
        self.claim_times.append(anyio.current_time())
        return await super().claim_jobs(worker, limit, lease_seconds)


async def added_in_order(queue: InMemoryQueue, *params: dict[str, object]) -> list[UUID]:
    """Jobs created a moment apart, so claims take them in this order (virtual time stands
    still between two lines; ``created_at`` orders claims, then the random id)."""
    ids = []
    for job_params in params:
        ids.append(queue.add(job_params))
        await anyio.sleep(0.001)
    return ids


def claim_calls(queue: InMemoryQueue) -> int:
    return sum(call.startswith("claim") for call in queue.calls)


async def handled(dispatcher: Dispatcher, before: float) -> None:
    """The loop took the wake-ups sent since ``before`` (a paused fill returns at once)."""
    await wait_for(lambda: dispatcher.last_tick != before, what="wake-ups handled")
    await anyio.lowlevel.checkpoint()


@pytest.fixture
def alerts() -> Iterator[list[tuple[str, str, dict[str, object]]]]:
    """(level, message, extra) of every log line at ERROR or above."""
    lines: list[tuple[str, str, dict[str, object]]] = []
    sink = logger.add(lambda m: lines.append(
        (m.record["level"].name, m.record["message"], dict(m.record["extra"]))), level="ERROR")
    try:
        yield lines
    finally:
        logger.remove(sink)


async def test_a_config_error_gives_the_job_back_uncounted_unrefunded_and_stops_claims(
        alerts: list[tuple[str, str, dict[str, object]]]) -> None:
    queue, gemini, metrics = InMemoryQueue(LoopClock()), Revoked(), Metrics()
    ids = [queue.add() for _ in range(3)]
    dispatcher = make(queue, gemini, slots=1, pause=PauseSettings(initial_seconds=60),
                      metrics=metrics)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run)
            dispatcher.wake(ids[0], "realtime")
            await wait_for(lambda: "release" in queue.calls and dispatcher.in_flight == 0)
            claims, before = claim_calls(queue), dispatcher.last_tick
            for source in ("sweep", "catchup", "backlog"):  # every source of wake-ups
                dispatcher.wake(None, source)
            for job_id in ids:
                dispatcher.wake(job_id, "realtime")
            await handled(dispatcher, before)
            assert claim_calls(queue) == claims  # nothing claimed while paused
            status = dispatcher.pause_status()
            assert status is not None and status.error_code == "gemini_auth"
            await dispatcher.shutdown()
    assert gemini.calls == [ids[0]]
    assert [queue.status(i) for i in ids] == [JobStatus.QUEUED] * 3
    assert [queue.jobs[i].job.attempts for i in ids] == [0, 0, 0]
    assert [queue.jobs[i].refunds for i in ids] == [0, 0, 0]
    assert queue.jobs[ids[0]].error is None and "fail" not in queue.calls
    assert sample(metrics, "worker_config_pauses_total", code="gemini_auth") == 1
    assert sample(metrics, "worker_jobs_released_total", reason="config_error") == 1
    assert sample(metrics, "worker_jobs_failed_total", code="gemini_auth") == 0
    [(level, message, extra)] = alerts  # one loud line for the pause
    assert level == "CRITICAL" and extra["event"] == "claims_paused"
    assert extra["error_code"] == "gemini_auth" and "60" in message


async def test_claims_resume_by_themselves_when_the_cool_down_ends() -> None:
    queue, gemini, metrics = TimedQueue(), Revoked(), Metrics()
    ids = [queue.add() for _ in range(3)]
    dispatcher = make(queue, gemini, slots=3, pause=PauseSettings(initial_seconds=0.3),
                      metrics=metrics)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run)
            dispatcher.wake(None, "sweep")
            await wait_for(lambda: dispatcher.pause_status() is not None)
            gemini.broken = False  # the key is fixed; the test wakes nobody
            await wait_for(lambda: all(queue.status(i) == JobStatus.SUCCEEDED for i in ids))
            assert dispatcher.pause_status() is None
            await dispatcher.shutdown()
    assert queue.claim_times[1] - queue.claim_times[0] >= 0.3
    assert sample(metrics, "worker_jobs_claimed_total", source="resume") == 3
    assert sample(metrics, "worker_config_pauses_total", code="gemini_auth") == 1  # one incident
    assert [queue.jobs[i].job.attempts for i in ids] == [1, 1, 1]  # the given-back try not counted
    assert [queue.jobs[i].refunds for i in ids] == [0, 0, 0]


async def test_running_jobs_go_on_and_are_given_back_too_in_the_same_pause(
        alerts: list[tuple[str, str, dict[str, object]]]) -> None:
    queue, processor, metrics = InMemoryQueue(LoopClock()), ScriptedProcessor(), Metrics()
    first, later, done, waiting = await added_in_order(
        queue, {"script": {"fail": "config"}}, {"script": {"fail": "config", "duration": 0.2}},
        {"script": {"duration": 0.3}}, {})
    dispatcher = make(queue, processor, slots=3, pause=PauseSettings(initial_seconds=60),
                      metrics=metrics)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run)
            dispatcher.wake(None, "sweep")
            await wait_for(lambda: queue.status(done) == JobStatus.SUCCEEDED
                           and dispatcher.in_flight == 0)
            assert dispatcher.pause_status() is not None  # a job claimed before it ends nothing
            await dispatcher.shutdown()
    assert [queue.status(i) for i in (first, later, waiting)] == [JobStatus.QUEUED] * 3
    assert [queue.jobs[i].job.attempts for i in (first, later)] == [0, 0]
    assert waiting not in processor.calls
    assert sample(metrics, "worker_config_pauses_total", code="scripted_config") == 1
    assert sample(metrics, "worker_jobs_released_total", reason="config_error") == 2
    assert [extra["event"] for level, _, extra in alerts if level == "CRITICAL"] == ["claims_paused"]


async def test_shutdown_during_a_pause_is_prompt() -> None:
    queue, gemini = InMemoryQueue(LoopClock()), Revoked()
    queue.add()
    dispatcher = make(queue, gemini, pause=PauseSettings(initial_seconds=600))
    # The cool-down's own wake-up must not hold the loop open.
    await shutdown_is_prompt(dispatcher, lambda: dispatcher.pause_status() is not None)


async def shutdown_is_prompt(dispatcher: Dispatcher, settled: Callable[[], bool]) -> None:
    """Serve, wake once, wait until ``settled()`` and no job runs; shutdown ends within 1 s."""
    stopped = anyio.Event()

    async def serve(*, task_status: TaskStatus[None]) -> None:
        await dispatcher.run(task_status=task_status)
        stopped.set()

    async with anyio.create_task_group() as tg:
        await tg.start(serve)
        dispatcher.wake(None, "sweep")
        with anyio.fail_after(5):
            await wait_for(lambda: settled() and not dispatcher.in_flight)
        with anyio.fail_after(1):
            await dispatcher.shutdown()
            await stopped.wait()


async def test_drain_gives_back_and_returns_without_waiting_for_the_cool_down() -> None:
    queue, gemini = InMemoryQueue(LoopClock()), Revoked()
    ids = [queue.add() for _ in range(4)]
    with anyio.fail_after(2):
        await make(queue, gemini, slots=2, pause=PauseSettings(initial_seconds=600)).drain()
    assert len(gemini.calls) == 2  # the first claim's jobs only
    assert [queue.status(i) for i in ids] == [JobStatus.QUEUED] * 4
    assert [queue.jobs[i].job.attempts for i in ids] == [0] * 4
    assert "fail" not in queue.calls


async def test_a_job_failing_before_gemini_proves_nothing_and_the_pause_keeps_doubling() -> None:
    """Only a job that went through shows the configuration works again: a job that failed on
    its own input never reached Gemini, so the next pause still doubles."""
    queue, metrics = InMemoryQueue(LoopClock()), Metrics()
    queue.add({"script": {"fail": "config", "duration": 0.05}})  # Gemini refuses, after a moment
    dispatcher = make(queue, ScriptedProcessor(), slots=2, metrics=metrics,
                      pause=PauseSettings(initial_seconds=0.3, max_seconds=10))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run)
            dispatcher.wake(None, "sweep")
            await wait_for(lambda: dispatcher.pause_status() is not None, what="first pause")
            bad = queue.add({"script": {"fail": "permanent"}})  # fails at once on its input
            await wait_for(lambda: sample(metrics, "worker_config_pauses_total", code="scripted_config")
                           == 2, what="second pause")
            status = dispatcher.pause_status()
            await dispatcher.shutdown()
    assert queue.status(bad) == JobStatus.FAILED
    assert status is not None and status.cool_down_seconds == 0.6 and status.consecutive == 2


async def test_a_claim_answered_late_renews_its_lease_at_once() -> None:
    """A claim whose answer took most of the lease must renew before its local deadline, not
    sleep through it: the database's lease is still valid."""
    queue = SlowAnswer()
    job_id = queue.add({"script": {"duration": 1}})
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(make(queue, ScriptedProcessor(), lease=3).drain)
            await queue.claimed.wait()
            await anyio.sleep(2.5)  # the answer takes most of the 3 s lease
            queue.answer.set()
    assert queue.status(job_id) == JobStatus.SUCCEEDED
    assert "heartbeat" in queue.calls


def quick_retries(queue: InMemoryQueue, processor: object, metrics: Metrics) -> Dispatcher:
    """A dispatcher whose own backoff is negligible: the scripted ``retry_after`` decides."""
    settings = DispatcherSettings(worker_id="w1", max_concurrent_jobs=2, lease_seconds=30,
                                  shutdown_grace_seconds=0.5, backoff=Backoff(base_seconds=0.01))
    return Dispatcher(queue, processor, settings, metrics)  # type: ignore[arg-type]


async def test_a_retry_is_claimed_when_it_is_due_without_waiting_for_a_sweep() -> None:
    queue, processor, metrics = InMemoryQueue(LoopClock()), ScriptedProcessor(), Metrics()
    job_id = queue.add({"script": {"fail": "retryable", "retry_after": 1}}, max_attempts=2)
    dispatcher = quick_retries(queue, processor, metrics)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run)
            dispatcher.wake(None, "sweep")  # the only wake-up from outside
            await wait_for(lambda: queue.status(job_id) == JobStatus.FAILED, within=3)
            await dispatcher.shutdown()
    assert processor.calls[job_id] == 2
    assert sample(metrics, "worker_jobs_claimed_total", source="retry_due") == 1


async def test_a_pending_retry_timer_does_not_hold_shutdown_open() -> None:
    queue, processor, metrics = InMemoryQueue(LoopClock()), ScriptedProcessor(), Metrics()
    queue.add({"script": {"fail": "retryable", "retry_after": 600}})
    dispatcher = quick_retries(queue, processor, metrics)
    await shutdown_is_prompt(dispatcher, lambda: sample(
        metrics, "worker_jobs_retried_total", code="scripted_retryable") == 1)
