"""Creating and requeueing jobs from the command line, the way the app does (``DATABASE_URL``).

``submit`` deducts one credit, inserts a queued job and writes the charge in the ledger
(``credit_events``), in one transaction. ``requeue`` puts a
failed job back in the queue by hand; a refunded job is requeued free of charge
(``credits_charged = 0``), so the credit ledger stays exact whatever happens next.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import anyio
import asyncpg

from realtime_worker import sql
from realtime_worker.errors import WorkerError

TERMINAL = ("succeeded", "failed")


class SubmitError(WorkerError):
    """The job could not be created or found."""


async def _user_id(conn: asyncpg.Connection, email: str | None, user_id: UUID | None) -> UUID:
    if user_id is not None:
        return user_id
    found = await conn.fetchval(sql.query("user_by_email"), email)
    if found is None:
        raise SubmitError(f"no user with email {email}")
    return UUID(str(found))


async def submit(conn: asyncpg.Connection, params: dict[str, Any], *,
                 email: str | None = None, user_id: UUID | None = None) -> UUID:
    """Deduct a credit, insert a queued job and record the charge; SubmitError when the user has
    none left."""
    async with conn.transaction():
        owner = await _user_id(conn, email, user_id)
        charged = await conn.fetchval(sql.query("charge_credit"), owner)
        if charged is None:
            raise SubmitError("the user has no credits left")
        job_id = await conn.fetchval(sql.query("insert_job"), owner, json.dumps(params))
        reason = "edit_queued" if "edit_parent_id" in params else "generation_queued"
        await conn.execute(sql.query("record_charge"), owner, reason, job_id)
    return UUID(str(job_id))


async def requeue(conn: asyncpg.Connection, job_id: UUID) -> str:
    """Put a failed job back in the queue; returns a one-line description of what happened."""
    row = await conn.fetchrow(sql.query("requeue_failed_job"), job_id)
    if row is None:
        status = await conn.fetchval(sql.query("job_status"), job_id)
        raise SubmitError(f"job {job_id} is {status or 'not found'}; only failed jobs can be requeued")
    return "requeued" + (" (free of charge: its credit was refunded)" if row[0] == 0 else "")


async def wait(conn: asyncpg.Connection, job_id: UUID, within: float) -> asyncpg.Record:
    """Poll the job until it is succeeded or failed; TimeoutError after ``within`` seconds."""
    with anyio.fail_after(within):
        while True:
            row = await conn.fetchrow(sql.query("job_outcome"), job_id)
            if row is None:
                raise SubmitError(f"job {job_id} not found")
            if row["status"] in TERMINAL:
                return row
            await anyio.sleep(0.2)
