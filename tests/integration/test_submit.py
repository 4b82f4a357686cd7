"""submit and requeue: jobs created and put back the way the app and an operator would."""

from __future__ import annotations

import os
import sys

import anyio
import asyncpg
import pytest

from realtime_worker import submit
from tests.conftest import Database
from tests.helpers import balance, job, make_user, refunds
from tests.security.support import ledger_total

pytestmark = pytest.mark.integration

W = "worker-1"


async def fail_for_good(conn: asyncpg.Connection, job_id: object) -> None:
    await conn.execute("update jobs set run_after = now() where id = $1", job_id)
    assert await conn.fetch("select id from worker_claim_job($1, $2, 60)", job_id, W)
    status = await conn.fetchval("select worker_fail_job($1, $2, 'It broke.', 'boom', null)", job_id, W)
    assert status == "failed"


async def test_submit_charges_one_credit_and_queues(conn: asyncpg.Connection) -> None:
    user = await make_user(conn, balance=2)
    email = await conn.fetchval("select email from users where id = $1", user)
    job_id = await submit.submit(conn, {"text_prompt": "a fox"}, email=email)
    row = await job(conn, job_id)
    assert (row["status"], row["user_id"], row["credits_charged"]) == ("queued", user, 1)
    assert await balance(conn, user) == 1
    # The ledger explains the balance (DESIGN.md, Money): the charge is there, with its job.
    charge = await conn.fetchrow("select delta, reason from credit_events where job_id = $1", job_id)
    assert charge is not None and tuple(charge) == (-1, "generation_queued")
    assert await ledger_total(conn, user) == 1
    edit = await submit.submit(conn, {"edit_parent_id": str(job_id), "edit_prompt": "a hat"},
                               user_id=user)
    assert await conn.fetchval("select reason from credit_events where job_id = $1", edit) == "edit_queued"
    assert await ledger_total(conn, user) == await balance(conn, user) == 0


async def test_submit_without_credits_creates_nothing(conn: asyncpg.Connection) -> None:
    user = await make_user(conn, balance=0)
    with pytest.raises(submit.SubmitError, match="no credits"):
        await submit.submit(conn, {"text_prompt": "a fox"}, user_id=user)
    assert await conn.fetchval("select count(*) from jobs") == 0
    with pytest.raises(submit.SubmitError, match="no user"):
        await submit.submit(conn, {"text_prompt": "a fox"}, email="nobody@example.test")


async def test_requeue_of_a_refunded_job_is_free_and_the_ledger_stays_exact(
        conn: asyncpg.Connection) -> None:
    user = await make_user(conn, balance=3)
    job_id = await submit.submit(conn, {"text_prompt": "a fox"}, user_id=user)
    await fail_for_good(conn, job_id)
    assert await balance(conn, user) == 3
    assert "free of charge" in await submit.requeue(conn, job_id)
    row = await job(conn, job_id)
    assert (row["status"], row["attempts"], row["credits_charged"], row["error"]) == (
        "queued", 0, 0, None)
    await fail_for_good(conn, job_id)
    assert await balance(conn, user) == 3
    assert await refunds(conn, job_id) == 1


async def test_only_failed_jobs_can_be_requeued(conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    job_id = await submit.submit(conn, {"text_prompt": "a fox"}, user_id=user)
    with pytest.raises(submit.SubmitError, match="is queued"):
        await submit.requeue(conn, job_id)


async def test_requeue_command(db: Database, conn: asyncpg.Connection) -> None:
    user = await make_user(conn, balance=1)
    job_id = await submit.submit(conn, {"text_prompt": "a fox"}, user_id=user)
    await fail_for_good(conn, job_id)
    env = {**os.environ, "DATABASE_URL": db.dsn}
    command = [sys.executable, "-m", "realtime_worker", "requeue", str(job_id)]
    with anyio.fail_after(60):
        done = await anyio.run_process(command, env=env, check=False)
        again = await anyio.run_process(command, env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert f"job {job_id}: requeued" in done.stdout.decode()
    assert again.returncode == 1
    assert "only failed jobs can be requeued" in again.stderr.decode()
