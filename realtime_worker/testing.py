"""Test doubles shipped with the package: an in-memory queue and a scripted processor.

``InMemoryQueue`` implements the :class:`~realtime_worker.queue.JobQueue` port with the same
rules as the SQL functions, for fast tests of the core; it reads the time from a ``Clock``
(real time by default, or a ``FakeClock`` that moves only when told), and the contract suite in
``tests/queue_contract`` runs against both. ``scripted`` is a processor factory whose
behaviour each job sets in ``params_json.script``: ``{"duration": 2.5, "fail": "retryable" |
"permanent" | "config" | "quota" | "crash", "retry_after": 1}`` (``config``: Gemini refused the
worker's configuration; ``quota``: a 429, the job is deferred); it is what the worker tests run
instead of Gemini
(``realtime-worker run --processor realtime_worker.testing:scripted``). With
``SCRIPTED_CALL_LOG`` set, every call appends ``<job id> <worker id>`` to that file.
``InMemoryStorage`` and ``InMemoryAssets`` implement the Storage and assets ports of the
pipeline.
"""

from __future__ import annotations

import asyncio
import os
import selectors
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID, uuid4

import anyio
import anyio.lowlevel

from realtime_worker.assets import AssetLookupError, AssetRow
from realtime_worker.errors import (
    ConfigurationJobError,
    PermanentJobError,
    QuotaJobError,
    RetryableJobError,
    StorageError,
)
from realtime_worker.jobs import AssetKind, Job, JobResult, JobStatus
from realtime_worker.paths import ObjectPath
from realtime_worker.run import Processor
from realtime_worker.storage import ObjectNotFound, StorageUnavailable

if TYPE_CHECKING:
    from realtime_worker.worker import WorkerContext


class Clock(Protocol):
    """Where ``InMemoryQueue`` reads the time (the database's ``now()``)."""

    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that moves only when told: leases expire and retries come due without sleeping."""

    def __init__(self, start: datetime = datetime(2026, 1, 1, tzinfo=UTC)) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


class LoopClock:
    """The running event loop's clock as a date: on a :class:`VirtualTimeLoop`, virtual time,
    so the queue's leases and retries come due with the dispatcher's sleeps."""

    def __init__(self, start: datetime = datetime(2026, 1, 1, tzinfo=UTC)) -> None:
        self._start = start

    def now(self) -> datetime:
        return self._start + timedelta(seconds=anyio.current_time())


class _JumpingSelector(selectors.DefaultSelector):
    """Polls without waiting; when nothing is ready, moves the virtual clock to the next timer."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:  # no timer pending: only I/O can wake the loop
            return super().select(None)
        events = super().select(0)
        if not events:
            self._clock[0] += timeout
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on virtual time: whenever every task waits, the clock jumps to the next
    timer, so sleeps and timeouts take no wall-clock time and keep their order. For tests of
    code that does no real I/O while it waits (the dispatcher over an in-memory queue)."""

    def __init__(self) -> None:
        self._virtual = [0.0]
        super().__init__(_JumpingSelector(self._virtual))

    def time(self) -> float:
        return self._virtual[0]


# The messages worker_reap_expired writes (realtime_worker/sql/migrations/0001_worker_contract.sql).
LEASE_RETRY = "The worker running this job stopped responding; it will be retried."
LEASE_FAILED = "The job could not be finished after several attempts."


@dataclass
class MemoryJob:
    job: Job
    run_after: datetime
    locked_until: datetime | None = None
    refunds: int = 0
    results: list[JobResult] = field(default_factory=list)
    error: str | None = None
    error_code: str | None = None
    deferrals: int = 0


# A job's budget of deferrals (worker_defer_job in 0010_quota_deferrals.sql).
MAX_DEFERRALS = 20


class InMemoryQueue:
    """The database contract in memory, rule for rule as the ``worker_*`` functions; records
    every call in ``calls``."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.jobs: dict[UUID, MemoryJob] = {}
        self.calls: list[str] = []
        self.turns: dict[UUID, int] = {}  # user -> the claim_jobs call that last served the user
        self._turn = 0

    def add(self, params: dict[str, Any] | None = None, *, max_attempts: int = 3,
            user_id: UUID | None = None) -> UUID:
        now = self.clock.now()
        job = Job(id=uuid4(), user_id=user_id or uuid4(), status=JobStatus.QUEUED, params=params or {},
                  attempts=0, max_attempts=max_attempts, created_at=now)
        self.jobs[job.id] = MemoryJob(job, run_after=now)
        return job.id

    def status(self, job_id: UUID) -> JobStatus:
        return self.jobs[job_id].job.status

    def _in(self, seconds: float) -> datetime:
        return self.clock.now() + timedelta(seconds=seconds)

    def _claim(self, item: MemoryJob, worker: str, lease: int) -> Job:
        item.job = replace(item.job, status=JobStatus.RUNNING, attempts=item.job.attempts + 1,
                           locked_by=worker)
        item.locked_until = self._in(lease)
        return item.job

    def _due(self, item: MemoryJob) -> bool:
        return item.job.status == JobStatus.QUEUED and item.run_after <= self.clock.now()

    def _held(self, job_id: UUID, worker: str) -> MemoryJob | None:
        """The job if ``worker`` is its ``locked_by``, whatever its status."""
        item = self.jobs.get(job_id)
        return item if item and item.job.locked_by == worker else None

    def _owned(self, job_id: UUID, worker: str) -> MemoryJob | None:
        item = self._held(job_id, worker)
        return item if item and item.job.status == JobStatus.RUNNING else None

    def _requeue(self, item: MemoryJob, delay: float, attempts: int) -> None:
        item.job = replace(item.job, status=JobStatus.QUEUED, locked_by=None, attempts=attempts)
        item.run_after = self._in(max(delay, 0))
        item.locked_until = None

    def _fail_for_good(self, item: MemoryJob) -> None:
        """Failed, and the credit back: reachable once per job, since only a running job fails."""
        item.job = replace(item.job, status=JobStatus.FAILED)
        item.locked_until = None
        item.refunds += 1

    async def claim_job(self, job_id: UUID, worker: str, lease_seconds: int) -> Job | None:
        self.calls.append("claim_job")
        item = self.jobs.get(job_id)
        return self._claim(item, worker, lease_seconds) if item and self._due(item) else None

    async def claim_jobs(self, worker: str, limit: int, lease_seconds: int) -> list[Job]:
        self.calls.append("claim_jobs")
        self._turn += 1
        chosen = self._turns_first(max(limit, 0))
        for item in chosen:
            self.turns[item.job.user_id] = self._turn
        return [self._claim(item, worker, lease_seconds) for item in chosen]

    def _turns_first(self, limit: int) -> list[MemoryJob]:
        """As worker_claim_jobs (0015_round_robin_batches.sql): round by round, every user's
        next due job, the user served longest ago first within a round, oldest first among
        equals."""
        def age(item: MemoryJob) -> tuple[Any, UUID]:
            return item.job.created_at, item.job.id

        due = sorted((item for item in self.jobs.values() if self._due(item)), key=age)
        seen: dict[UUID, int] = {}
        rounds = []
        for item in due:
            seen[item.job.user_id] = seen.get(item.job.user_id, 0) + 1
            rounds.append((seen[item.job.user_id], self.turns.get(item.job.user_id, 0), *age(item), item))
        return [entry[-1] for entry in sorted(rounds, key=lambda e: e[:-1])][:limit]

    async def heartbeat(self, job_id: UUID, worker: str, lease_seconds: int) -> bool:
        self.calls.append("heartbeat")
        item = self._owned(job_id, worker)
        if item:
            item.locked_until = self._in(lease_seconds)
        return item is not None

    async def complete(self, job_id: UUID, worker: str, result: JobResult) -> bool:
        self.calls.append("complete")
        item = self._held(job_id, worker)
        if item is None or item.job.status not in (JobStatus.RUNNING, JobStatus.SUCCEEDED):
            return False
        if item.job.status == JobStatus.RUNNING:
            item.job = replace(item.job, status=JobStatus.SUCCEEDED)
            item.results.append(result)
            item.locked_until, item.error, item.error_code = None, None, None
        return True

    async def fail(self, job_id: UUID, worker: str, error: str, code: str,
                   retry_in_seconds: int | None) -> str | None:
        self.calls.append("fail")
        return self._fail(job_id, worker, error, code, retry_in_seconds)

    def _fail(self, job_id: UUID, worker: str, error: str, code: str,
              retry_in_seconds: int | None) -> str | None:
        item = self._held(job_id, worker)
        if item is None or item.job.status not in (JobStatus.RUNNING, JobStatus.FAILED):
            return None
        if item.job.status == JobStatus.FAILED:
            return "failed"
        item.error, item.error_code = error, code
        if retry_in_seconds is not None and item.job.attempts < item.job.max_attempts:
            self._requeue(item, retry_in_seconds, item.job.attempts)
            return "queued"
        self._fail_for_good(item)
        return "failed"

    async def defer(self, job_id: UUID, worker: str, error: str, code: str,
                    retry_in_seconds: int) -> str | None:
        self.calls.append("defer")
        item = self._owned(job_id, worker)
        if item is None or item.deferrals >= MAX_DEFERRALS:  # as a failure without a retry
            return self._fail(job_id, worker, error, code, None)
        item.error, item.error_code = error, code
        item.deferrals += 1
        self._requeue(item, retry_in_seconds, max(item.job.attempts - 1, 0))
        return "queued"

    async def release(self, job_id: UUID, worker: str) -> bool:
        self.calls.append("release")
        item = self._owned(job_id, worker)
        if item:
            self._requeue(item, 0, max(item.job.attempts - 1, 0))
        return item is not None

    async def reap_expired(self, limit: int) -> int:
        self.calls.append("reap_expired")
        now = self.clock.now()
        expired = sorted((item for item in self.jobs.values() if item.job.status == JobStatus.RUNNING
                          and item.locked_until is not None and item.locked_until < now),
                         key=lambda item: item.locked_until or now)[:max(limit, 0)]
        for item in expired:
            self._reap(item)
        return len(expired)

    def _reap(self, item: MemoryJob) -> None:
        item.error_code = "lease_expired"
        if item.job.attempts < item.job.max_attempts:
            item.error = LEASE_RETRY
            self._requeue(item, 0, item.job.attempts)
        else:
            item.error = LEASE_FAILED
            self._fail_for_good(item)


class ScriptedProcessor:
    """Sleeps, fails or crashes as ``params_json.script`` says; counts calls per job."""

    def __init__(self, worker_id: str = "test", call_log: str | None = None) -> None:
        self.calls: dict[UUID, int] = {}
        self._worker_id = worker_id
        self._call_log = call_log

    async def __call__(self, job: Job) -> JobResult:
        self.calls[job.id] = self.calls.get(job.id, 0) + 1
        if self._call_log:
            async with await anyio.open_file(self._call_log, "a", encoding="utf-8") as log:
                await log.write(f"{job.id} {self._worker_id}\n")
        script = job.params.get("script") or {}
        await anyio.sleep(float(script.get("duration", 0)))
        fail = script.get("fail")
        if fail == "retryable":
            raise RetryableJobError("Scripted retryable failure", code="scripted_retryable",
                                    retry_after=script.get("retry_after"))
        if fail == "permanent":
            raise PermanentJobError("Scripted permanent failure", code="scripted_permanent")
        if fail == "quota":
            raise QuotaJobError("Gemini is rate limiting us", code="rate_limited",
                                retry_after=script.get("retry_after"))
        if fail == "config":
            raise ConfigurationJobError("Scripted configuration failure", code="scripted_config")
        if fail == "crash":
            raise RuntimeError("scripted crash")
        return JobResult(model="scripted", cost_cents=0)


@asynccontextmanager
async def scripted(context: WorkerContext) -> AsyncIterator[Processor]:
    """Processor factory for ``--processor realtime_worker.testing:scripted``."""
    yield ScriptedProcessor(context.settings.worker_id, os.environ.get("SCRIPTED_CALL_LOG"))


class InMemoryStorage:
    """The Storage port in memory: objects by (bucket, name) with their content types.

    ``unavailable`` makes every call (download, upload, remove) raise ``StorageUnavailable``;
    ``refuse_uploads`` makes uploads raise a plain ``StorageError`` (a refusal).
    """

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.unavailable = False
        self.refuse_uploads = False

    def put(self, path: ObjectPath, data: bytes, content_type: str = "image/jpeg") -> None:
        self.objects[(path.bucket, path.name)] = (data, content_type)

    async def download(self, path: ObjectPath) -> bytes:
        await anyio.lowlevel.checkpoint()
        if self.unavailable:
            raise StorageUnavailable(f"download of {path.qualified} failed: 503")
        found = self.objects.get((path.bucket, path.name))
        if found is None:
            raise ObjectNotFound(f"download of {path.qualified} failed: 404")
        return found[0]

    async def upload(self, path: ObjectPath, data: bytes, content_type: str) -> None:
        await anyio.lowlevel.checkpoint()
        if self.unavailable:
            raise StorageUnavailable(f"upload of {path.qualified} failed: 503")
        if self.refuse_uploads:
            raise StorageError(f"upload of {path.qualified} failed: 403 AccessDenied")
        self.put(path, data, content_type)

    async def remove(self, path: ObjectPath) -> None:
        await anyio.lowlevel.checkpoint()
        if self.unavailable:
            raise StorageUnavailable(f"remove of {path.qualified} failed: 503")
        self.objects.pop((path.bucket, path.name), None)


class InMemoryAssets:
    """The assets port in memory; ``unavailable`` makes lookups raise ``AssetLookupError``."""

    def __init__(self) -> None:
        self.rows: dict[UUID, AssetRow] = {}
        self.unavailable = False

    def add(self, user_id: UUID, kind: AssetKind, storage_path: str) -> UUID:
        row = AssetRow(id=uuid4(), user_id=user_id, kind=kind, storage_path=storage_path)
        self.rows[row.id] = row
        return row.id

    async def get(self, asset_id: UUID) -> AssetRow | None:
        await anyio.lowlevel.checkpoint()
        if self.unavailable:
            raise AssetLookupError(f"reading asset {asset_id} failed: 503")
        return self.rows.get(asset_id)
