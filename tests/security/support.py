"""What the attack tests share: a user as sign-up makes one, their own client, the schema before
migration 0004, and the worker's outcomes called the way the worker calls them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from supabase import AsyncClient

from realtime_worker import sql
from realtime_worker_devstack import users
from realtime_worker_devstack.server import Devstack, running
from tests.devstack_fixtures import supabase_client
from tests.integration.test_migration import install_app

SIGNUP_CREDITS = users.SIGNUP_CREDITS


async def sign_up(conn: asyncpg.Connection, balance: int = SIGNUP_CREDITS) -> uuid.UUID:
    """A user as the app creates one (its sign-up trigger), holding ``balance`` credits."""
    return await users.create(conn, balance)


def as_user(devstack: Devstack, user: uuid.UUID) -> AbstractAsyncContextManager[AsyncClient]:
    """The official client with the user's own JWT, as a signed-in browser holds it."""
    return supabase_client(devstack.url, devstack.keys.make("authenticated", sub=str(user)))


async def install_before_0004(dsn: str) -> None:
    """The app's schema with the worker's migrations as they were before 0004.

    0004 is recorded as applied without being run, so that the devstack leaves the schema alone:
    this is the database on which the attacks below were found.
    """
    await install_app(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql.query("migration_history"))
        for migration in sql.migrations():
            if migration.version < "0004":
                await conn.execute(migration.sql)
            await conn.execute(sql.query("record_migration"), migration.version, migration.name, "")
    finally:
        await conn.close()


@asynccontextmanager
async def stack_on(dsn: str, data_dir: Path) -> AsyncIterator[Devstack]:
    async with running(database_dsn=dsn, data_dir=data_dir) as stack:
        yield stack


async def ledger_total(conn: asyncpg.Connection, user: uuid.UUID) -> int:
    total: int = await conn.fetchval(
        "select coalesce(sum(delta), 0) from public.credit_events where user_id = $1", user)
    return total


balance_of = users.balance


async def claim(conn: asyncpg.Connection, job_id: uuid.UUID, worker: str = "w") -> bool:
    row = await conn.fetchrow("select id from public.worker_claim_job($1, $2, 60)", job_id, worker)
    return row is not None


async def fail(conn: asyncpg.Connection, job_id: uuid.UUID, code: str, *,
               retry: int | None = None, worker: str = "w") -> Any:
    return await conn.fetchval("select public.worker_fail_job($1, $2, 'e', $3, $4)",
                               job_id, worker, code, retry)


async def exhaust_lease(conn: asyncpg.Connection, job_id: uuid.UUID) -> None:
    """Claim until the attempts are used up, each lease running out, then reap."""
    for _ in range(3):
        assert await claim(conn, job_id)
        await conn.execute(
            "update public.jobs set locked_until = now() - interval '1 s' where id = $1", job_id)
        await conn.fetchval("select public.worker_reap_expired(100)")
