"""A hinted claim commits asynchronously (migration 0021): a Postgres crash right after it loses
the claim, and losing it is harmless. A real crash of this test's own embedded Postgres, never
the shared one: the WAL writer is stopped (SIGSTOP) before the claim, so nothing flushes an
asynchronous commit, then the server is shut down in immediate mode (no flush, no checkpoint)
and started again: it recovers from the WAL on disk, as after any server crash."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from bench.chaos_stack import EmbeddedPostgres
from realtime_worker_devstack import postgres
from tests.helpers import balance, insert_job, job, make_user, refunds

pytestmark = pytest.mark.integration

OLD, NEW = "worker-a#p1.1", "worker-a#p2.1"  # the same worker id, two claims
RESULT = json.dumps({"model": "m", "cost_cents": 4, "assets": []})
# With the WAL writer stopped, only these could still flush the claim's WAL (writing a data page
# flushes the WAL up to it first): the background writer and autovacuum are off.
WALWRITER = "select pid from pg_stat_activity where backend_type = 'walwriter'"
QUIET = ("alter system set bgwriter_lru_maxpages = 0", "alter system set autovacuum = off")


async def crash_after(server: EmbeddedPostgres, dsn: str,
                      action: Callable[[asyncpg.Connection], Awaitable[Any]]) -> None:
    """``action`` with the WAL writer stopped, then the crash; returns once Postgres is back."""
    conn = await asyncpg.connect(dsn)
    try:
        os.kill(await conn.fetchval(WALWRITER), signal.SIGSTOP)
        await action(conn)
    finally:
        conn.terminate()  # its server process is about to go
        # Immediate shutdown: no flush, no checkpoint; the stopped WAL writer ignores the SIGQUIT
        # and is killed by the postmaster 5 s later. pg_ctl -w returns once recovery is over.
        await anyio.to_thread.run_sync(server.restart, "immediate")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedPostgres]:
    embedded = await anyio.to_thread.run_sync(EmbeddedPostgres.start, tmp_path / "pg")
    try:
        yield embedded
    finally:
        await anyio.to_thread.run_sync(embedded.stop)


async def prepared(server: EmbeddedPostgres) -> str:
    dsn = await postgres.create_database(server.admin_dsn, "crash")
    conn = await asyncpg.connect(dsn)
    try:
        await postgres.install_schema(conn)
        for statement in QUIET:
            await conn.execute(statement)
        await conn.execute("select pg_reload_conf()")
    finally:
        await conn.close()
    return dsn


async def test_a_claim_lost_in_a_crash_comes_back_once_and_costs_no_credit(
        server: EmbeddedPostgres) -> None:
    dsn = await prepared(server)
    conn = await asyncpg.connect(dsn)
    user = await make_user(conn)
    job_id = await insert_job(conn, user)  # committed synchronously, as the app's insert is
    await conn.close()

    async def claim(conn: asyncpg.Connection) -> None:
        claimed = await conn.fetch("select id from worker_claim_job($1, $2, 60)", job_id, OLD)
        assert [r["id"] for r in claimed] == [job_id]

    await crash_after(server, dsn, claim)

    conn = await asyncpg.connect(dsn)
    try:
        row = await job(conn, job_id)
        assert (row["status"], row["attempts"], row["locked_by"]) == ("queued", 0, None)  # lost
        # the run that held the lost claim: its lease is gone, nothing it writes lands
        assert await conn.fetchval("select worker_heartbeat($1, $2, 60)", job_id, OLD) is False
        assert await conn.fetchval("select worker_complete_job($1, $2, $3)", job_id, OLD, RESULT) is False
        assert await conn.fetchval("select worker_fail_job($1, $2, 'x', 'x', null)", job_id, OLD) is None
        # the next sweep claims it again, and it completes once
        again = await conn.fetch("select id, attempts from worker_claim_jobs($1, 10, 60)", NEW)
        assert [(r["id"], r["attempts"]) for r in again] == [(job_id, 1)]
        assert await conn.fetchval("select worker_complete_job($1, $2, $3)", job_id, NEW, RESULT) is True
        assert (await job(conn, job_id))["status"] == "succeeded"
        assert (await balance(conn, user), await refunds(conn, job_id)) == (9, 0)
    finally:
        await conn.close()


async def test_the_other_writes_survive_the_same_crash(server: EmbeddedPostgres) -> None:
    dsn = await prepared(server)
    conn = await asyncpg.connect(dsn)
    user = await make_user(conn)
    job_id = await insert_job(conn, user)
    await conn.close()

    async def claim_and_fail(conn: asyncpg.Connection) -> None:
        await conn.fetch("select id from worker_claim_jobs($1, 10, 60)", OLD)  # the sweep's claim
        assert await conn.fetchval("select worker_fail_job($1, $2, 'x', 'x', null)",
                                   job_id, OLD) == "failed"

    await crash_after(server, dsn, claim_and_fail)

    conn = await asyncpg.connect(dsn)
    try:
        row = await job(conn, job_id)
        assert (row["status"], row["attempts"]) == ("failed", 1)
        assert (await balance(conn, user), await refunds(conn, job_id)) == (10, 1)
    finally:
        await conn.close()
