"""Small helpers shared by the tests: users, jobs and calls the way the app makes them."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from realtime_worker.metrics import Metrics
from realtime_worker_devstack import users


async def make_user(conn: asyncpg.Connection, balance: int = 10) -> uuid.UUID:
    """A user as the app's sign-up creates them, holding ``balance`` credits the ledger explains."""
    return await users.create(conn, balance)


async def insert_job(conn: asyncpg.Connection, user_id: uuid.UUID,
                     params: object = None, **columns: Any) -> uuid.UUID:
    """Deduct a credit and insert a queued job, as the app does.

    ``params`` is any JSON value (the app's mistakes included: a string, an array)."""
    params = params if params is not None else {"text_prompt": "a tiger eating a burger"}
    names = ["user_id", "params_json", *columns]
    values = [user_id, json.dumps(params), *columns.values()]
    marks = ", ".join(f"${i + 1}" for i in range(len(values)))
    async with conn.transaction():
        await conn.execute(
            "update public.credits set balance = balance - 1 where user_id = $1", user_id)
        row = await conn.fetchrow(
            f"insert into public.jobs ({', '.join(names)}) values ({marks}) returning id", *values)
    assert row is not None
    job_id: uuid.UUID = row["id"]
    return job_id


async def job(conn: asyncpg.Connection, job_id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow("select * from public.jobs where id = $1", job_id)
    assert row is not None
    return row


async def balance(conn: asyncpg.Connection, user_id: uuid.UUID) -> int:
    value: int = await conn.fetchval(
        "select balance from public.credits where user_id = $1", user_id)
    return value


async def refunds(conn: asyncpg.Connection, job_id: uuid.UUID) -> int:
    """The job's refund rows in the ledger (a charge by create_job or submit carries the job too)."""
    value: int = await conn.fetchval(
        "select count(*) from public.credit_events where job_id = $1 and delta > 0", job_id)
    return value


async def as_role(conn: asyncpg.Connection, role: str, query: str, *args: Any) -> Any:
    """Run one query under a Supabase API role, the way PostgREST does."""
    async with conn.transaction():
        await conn.execute(f"set local role {role}")
        return await conn.fetch(query, *args)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """A metric's current value (0 when it has no sample with these labels yet)."""
    return metrics.registry.get_sample_value(name, labels) or 0.0


class ManualClock:
    """A monotonic clock (a callable, as ``time.monotonic``) that moves when a test sets ``now``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
