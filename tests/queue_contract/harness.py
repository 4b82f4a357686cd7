"""One face for both queues under the contract suite: add a job, move time, read what is stored.

``MemoryHarness`` drives ``InMemoryQueue`` on a ``FakeClock``. ``SqlHarness`` drives
``SupabaseQueue`` over the devstack's PostgREST; it "advances the clock" by moving every job's
timestamps back by the same amount in one statement, so the suite never sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from uuid import UUID, uuid4

import asyncpg

from realtime_worker.jobs import JobStatus
from realtime_worker.queue import JobQueue, SupabaseQueue
from realtime_worker.testing import FakeClock, InMemoryQueue
from tests.helpers import insert_job, make_user, refunds


@dataclass(frozen=True)
class JobState:
    """What the contract says about a stored job, the same for both queues."""

    status: JobStatus
    attempts: int
    locked_by: str | None
    error: str | None
    error_code: str | None
    refunds: int
    model: str | None
    assets: list[str]
    deferrals: int


class Harness(Protocol):
    @property
    def queue(self) -> JobQueue: ...

    async def add(self, *, max_attempts: int = 3, user: str | None = None) -> UUID:
        """A queued job, due now; ``user`` names its owner (by default a new user per job)."""

    async def advance(self, seconds: float) -> None: ...

    async def state(self, job_id: UUID) -> JobState: ...


class MemoryHarness:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.memory = InMemoryQueue(self.clock)
        self.users: dict[str, UUID] = {}

    @property
    def queue(self) -> JobQueue:
        return self.memory

    async def add(self, *, max_attempts: int = 3, user: str | None = None) -> UUID:
        owner = self.users.setdefault(user, uuid4()) if user is not None else None
        return self.memory.add(max_attempts=max_attempts, user_id=owner)

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    async def state(self, job_id: UUID) -> JobState:
        item = self.memory.jobs[job_id]
        return JobState(
            status=item.job.status, attempts=item.job.attempts, locked_by=item.job.locked_by,
            error=item.error, error_code=item.error_code, refunds=item.refunds,
            model=item.results[-1].model if item.results else None,
            assets=sorted(asset.storage_path for result in item.results for asset in result.assets),
            deferrals=item.deferrals)


SHIFT = """
update public.jobs set
  created_at = created_at - make_interval(secs => $1),
  run_after = run_after - make_interval(secs => $1),
  started_at = started_at - make_interval(secs => $1),
  heartbeat_at = heartbeat_at - make_interval(secs => $1),
  locked_until = locked_until - make_interval(secs => $1)
"""


class SqlHarness:
    def __init__(self, queue: SupabaseQueue, conn: asyncpg.Connection) -> None:
        self._queue = queue
        self._conn = conn
        self.users: dict[str, UUID] = {}

    @property
    def queue(self) -> JobQueue:
        return self._queue

    async def add(self, *, max_attempts: int = 3, user: str | None = None) -> UUID:
        # One user per job unless named: the user's assets are the job's assets.
        owner = self.users.get(user) if user is not None else None
        if owner is None:
            owner = await make_user(self._conn)
            if user is not None:
                self.users[user] = owner
        return await insert_job(self._conn, owner, max_attempts=max_attempts)

    async def advance(self, seconds: float) -> None:
        await self._conn.execute(SHIFT, float(seconds))

    async def state(self, job_id: UUID) -> JobState:
        row = await self._conn.fetchrow("select * from public.jobs where id = $1", job_id)
        assert row is not None
        paths = await self._conn.fetch(
            "select storage_path from public.assets where user_id = $1 order by storage_path",
            row["user_id"])
        return JobState(
            status=JobStatus(row["status"]), attempts=row["attempts"], locked_by=row["locked_by"],
            error=row["error"], error_code=row["error_code"], refunds=await refunds(self._conn, job_id),
            model=row["model"], assets=[p["storage_path"] for p in paths], deferrals=row["deferrals"])
