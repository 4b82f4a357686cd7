"""Creating and requeueing jobs from the command line, the way the app does (``DATABASE_URL``).

``submit`` deducts one credit and inserts a queued job in one transaction. ``requeue`` puts a
failed job back in the queue by hand; a refunded job is requeued free of charge
(``credits_charged = 0``), so the credit ledger stays exact whatever happens next.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import anyio
import asyncpg

from realtime_worker.errors import WorkerError

TERMINAL = ("succeeded", "failed")


class SubmitError(WorkerError):
    """The job could not be created or found."""


async def _user_id(conn: asyncpg.Connection, email: str | None, user_id: UUID | None) -> UUID:
    if user_id is not None:
        return user_id
    found = await conn.fetchval("select id from public.users where email = $1", email)
    if found is None:
        raise SubmitError(f"no user with email {email}")
    return UUID(str(found))


async def submit(conn: asyncpg.Connection, params: dict[str, Any], *,
                 email: str | None = None, user_id: UUID | None = None) -> UUID:
    """Deduct a credit and insert a queued job; SubmitError when the user has none left."""
    async with conn.transaction():
        owner = await _user_id(conn, email, user_id)
        charged = await conn.fetchval(
            """update public.credits set balance = balance - 1, updated_at = now()
               where user_id = $1 and balance >= 1 returning balance""", owner)
        if charged is None:
            raise SubmitError("the user has no credits left")
        job_id = await conn.fetchval(
            "insert into public.jobs (user_id, params_json) values ($1, $2::jsonb) returning id",
            owner, json.dumps(params))
    return UUID(str(job_id))


async def requeue(conn: asyncpg.Connection, job_id: UUID) -> str:
    """Put a failed job back in the queue; returns a one-line description of what happened."""
    row = await conn.fetchrow(
        """update public.jobs set status = 'queued', attempts = 0, run_after = now(),
             locked_by = null, locked_until = null, heartbeat_at = null, ended_at = null,
             error = null, error_code = null,
             credits_charged = case when refunded_at is null then credits_charged else 0 end
           where id = $1 and status = 'failed'
           returning credits_charged""", job_id)
    if row is None:
        status = await conn.fetchval("select status::text from public.jobs where id = $1", job_id)
        raise SubmitError(f"job {job_id} is {status or 'not found'}; only failed jobs can be requeued")
    return "requeued" + (" (free of charge: its credit was refunded)" if row[0] == 0 else "")


async def wait(conn: asyncpg.Connection, job_id: UUID, within: float) -> asyncpg.Record:
    """Poll the job until it is succeeded or failed; TimeoutError after ``within`` seconds."""
    with anyio.fail_after(within):
        while True:
            row = await conn.fetchrow(
                "select status::text as status, error, model, cost_cents, attempts from public.jobs"
                " where id = $1", job_id)
            if row is None:
                raise SubmitError(f"job {job_id} not found")
            if row["status"] in TERMINAL:
                return row
            await anyio.sleep(0.2)
