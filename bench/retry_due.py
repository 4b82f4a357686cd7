"""How late a deferred retry is claimed: its second claim minus the ``run_after`` its first
attempt set.

Run: ``uv run --group bench python -m bench.retry_due [JOBS]``. One Postgres, one devstack,
one ``realtime-worker run`` in realtime mode (sweep every 30 s) with the scripted processor.
Each job (one at a time, nothing else queued) fails retryably after 1 s asking for a retry in
3 s (the worker's backoff may make it longer); its row then holds ``run_after``. The second
claim writes ``heartbeat_at = now()``: the lateness is ``heartbeat_at - run_after``, both read
from the database's clock. Before the worker woke itself at the due time a retry waited for the
next sweep (0-30 s late). Not part of ``python -m bench all``; asserts nothing.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import uuid

import asyncpg

from bench import harness
from realtime_worker_devstack.stack import DEV_USER_ID

SCRIPT = json.dumps({"script": {"duration": 1, "fail": "retryable", "retry_after": 3}})
STEP = 0.01


async def row(conn: asyncpg.Connection, job_id: uuid.UUID) -> asyncpg.Record:
    record = await conn.fetchrow(
        "select status, attempts, run_after, heartbeat_at from public.jobs where id = $1", job_id)
    assert record is not None, f"job {job_id} is gone"
    return record


async def until(conn: asyncpg.Connection, job_id: uuid.UUID, status: str,
                attempts: int) -> asyncpg.Record:
    for _ in range(int(120 / STEP)):
        current = await row(conn, job_id)
        if current["status"] == status and current["attempts"] == attempts:
            return current
        await asyncio.sleep(STEP)
    raise TimeoutError(f"job {job_id} never became {status} with {attempts} attempts")


async def lateness(conn: asyncpg.Connection) -> float:
    job_id = await conn.fetchval(harness.INSERT_JOB, DEV_USER_ID, SCRIPT)
    deferred = await until(conn, job_id, "queued", 1)
    again = await until(conn, job_id, "running", 2)
    late: float = (again["heartbeat_at"] - deferred["run_after"]).total_seconds()
    await conn.execute("delete from public.jobs where id = $1", job_id)
    return late


async def main(jobs: int) -> None:
    print(f"deferred retries: {jobs} jobs, one at a time, realtime mode (sweep 30 s)")
    with harness.temp_folder() as folder:
        async with harness.postgres_server(folder) as admin, harness.scratch_database(admin) as dsn, \
                harness.devstack(dsn, folder) as stack, \
                harness.worker(stack, folder, "retry", processor=harness.SCRIPTED):
            conn = await asyncpg.connect(dsn)
            try:
                lates = [await lateness(conn) for _ in range(jobs)]
            finally:
                await conn.close()
    for index, late in enumerate(lates, 1):
        print(f"  job {index}: claimed {late:6.3f} s after its run_after")
    print(f"lateness: median {statistics.median(lates):.3f} s, max {max(lates):.3f} s"
          f" (target: within 1 s)")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10))
