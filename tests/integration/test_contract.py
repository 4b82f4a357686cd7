"""Every branch of every worker_* function, against a real Postgres."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest

from tests.conftest import Database
from tests.helpers import as_role, balance, insert_job, job, make_user, refunds

pytestmark = pytest.mark.integration

W1, W2 = "worker-1", "worker-2"
RESULT = {
    "model": "gemini-3.1-flash-lite-image",
    "cost_cents": 4,
    "assets": [
        {"kind": "edge_map", "storage_path": "u/j/edge.png", "bytes": 10, "width": 8,
         "height": 9, "hash": "abc"},
        {"kind": "pdf", "storage_path": "u/j/coloring_page.pdf", "bytes": 20, "width": None,
         "height": None, "hash": "def"},
    ],
}


async def claim_one(conn: asyncpg.Connection, job_id: uuid.UUID, worker: str = W1,
                    lease: int = 60) -> list[asyncpg.Record]:
    return list(await conn.fetch("select * from worker_claim_job($1, $2, $3)", job_id, worker, lease))


async def fail(conn: asyncpg.Connection, job_id: uuid.UUID, retry: int | None,
               worker: str = W1) -> str | None:
    status: str | None = await conn.fetchval(
        "select worker_fail_job($1, $2, $3, $4, $5)", job_id, worker, "It broke.", "boom", retry)
    return status


async def test_claim_queued_due_job(conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    job_id = await insert_job(conn, user)
    rows = await claim_one(conn, job_id)
    assert [r["id"] for r in rows] == [job_id]
    row = await job(conn, job_id)
    assert row["status"] == "running"
    assert row["attempts"] == 1
    assert row["locked_by"] == W1
    assert row["started_at"] is not None and row["heartbeat_at"] is not None
    assert 55 <= (row["locked_until"] - row["heartbeat_at"]).total_seconds() <= 61


async def test_claim_skips_not_due_and_running(conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    later = await insert_job(conn, user)
    await conn.execute("update jobs set run_after = now() + interval '1 hour' where id = $1", later)
    assert await claim_one(conn, later) == []
    running = await insert_job(conn, user)
    assert len(await claim_one(conn, running)) == 1
    assert await claim_one(conn, running, W2) == []
    assert (await job(conn, running))["locked_by"] == W1
    assert await conn.fetch("select * from worker_claim_jobs($1, 10, 60)", W2) == []


async def test_claim_skips_a_row_another_claim_holds_instead_of_waiting(db: Database) -> None:
    holder, other = await asyncpg.connect(db.dsn), await asyncpg.connect(db.dsn)
    try:
        user = await make_user(holder)
        job_id = await insert_job(holder, user)
        # A regression that waits for the lock fails with lock_timeout instead of hanging.
        await other.execute("set lock_timeout = '3s'")
        async with holder.transaction():
            assert len(await claim_one(holder, job_id)) == 1  # locked until this commits
            assert await claim_one(other, job_id, W2) == []
            assert await other.fetch("select * from worker_claim_jobs($1, 10, 60)", W2) == []
        assert (await job(other, job_id))["locked_by"] == W1
    finally:
        await holder.close()
        await other.close()


async def test_claims_stay_right_once_the_session_reuses_their_plans(conn: asyncpg.Connection) -> None:
    # plpgsql keeps the statement's plan per session and may switch to a generic plan after
    # five calls: every call on one connection must still claim exactly the job it names.
    user = await make_user(conn)
    ids = [await insert_job(conn, user) for _ in range(12)]
    for number, job_id in enumerate(ids, start=1):
        assert [r["id"] for r in await claim_one(conn, job_id)] == [job_id]
        assert await claim_one(conn, job_id) == []
        assert (await job(conn, job_id))["attempts"] == 1, number
    for _ in range(8):
        assert await conn.fetch("select * from worker_claim_jobs($1, 10, 60)", W1) == []


async def test_claim_jobs_oldest_first_with_limit(conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    ids = [await insert_job(conn, user) for _ in range(5)]
    for i, job_id in enumerate(ids):
        await conn.execute(
            "update jobs set created_at = now() - make_interval(mins => $2) where id = $1",
            job_id, 10 - i)
    rows = await conn.fetch("select * from worker_claim_jobs($1, 3, 60)", W1)
    assert {r["id"] for r in rows} == set(ids[:3])
    rest = await conn.fetch("select * from worker_claim_jobs($1, 10, 60)", W2)
    assert {r["id"] for r in rest} == set(ids[3:])


async def test_expired_lease_is_reaped_then_claimable(conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    job_id = await insert_job(conn, user)
    await claim_one(conn, job_id, lease=1)
    assert await claim_one(conn, job_id, W2) == []
    await conn.execute("update jobs set locked_until = now() - interval '1 s' where id = $1", job_id)
    assert await conn.fetchval("select worker_reap_expired(100)") == 1
    row = await job(conn, job_id)
    assert (row["status"], row["attempts"], row["locked_by"]) == ("queued", 1, None)
    assert row["error_code"] == "lease_expired"
    rows = await claim_one(conn, job_id, W2)
    assert rows[0]["attempts"] == 2 and rows[0]["locked_by"] == W2


async def test_reap_fails_and_refunds_when_attempts_used_up(conn: asyncpg.Connection) -> None:
    user = await make_user(conn, balance=5)
    job_id = await insert_job(conn, user, max_attempts=1)
    await claim_one(conn, job_id)
    await conn.execute("update jobs set locked_until = now() - interval '1 s' where id = $1", job_id)
    assert await conn.fetchval("select worker_reap_expired(100)") == 1
    row = await job(conn, job_id)
    assert row["status"] == "failed" and row["ended_at"] is not None
    assert row["refunded_at"] is not None
    assert await balance(conn, user) == 5
    assert await refunds(conn, job_id) == 1
    assert await conn.fetchval("select worker_reap_expired(100)") == 0
    assert await balance(conn, user) == 5


async def test_reap_leaves_live_leases(conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    job_id = await insert_job(conn, user)
    await claim_one(conn, job_id)
    assert await conn.fetchval("select worker_reap_expired(100)") == 0
    assert (await job(conn, job_id))["status"] == "running"


async def test_heartbeat_owner_and_stranger(conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    job_id = await insert_job(conn, user)
    await claim_one(conn, job_id, lease=5)
    before = (await job(conn, job_id))["locked_until"]
    assert await conn.fetchval("select worker_heartbeat($1, $2, 120)", job_id, W1) is True
    assert (await job(conn, job_id))["locked_until"] > before
    assert await conn.fetchval("select worker_heartbeat($1, $2, 120)", job_id, W2) is False
    await conn.execute("select worker_release_job($1, $2)", job_id, W1)
    assert await conn.fetchval("select worker_heartbeat($1, $2, 120)", job_id, W1) is False


async def test_complete_by_owner_inserts_assets_once(conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    job_id = await insert_job(conn, user)
    await claim_one(conn, job_id)
    args = (job_id, W1, json.dumps(RESULT))
    assert await conn.fetchval("select worker_complete_job($1, $2, $3)", *args) is True
    row = await job(conn, job_id)
    assert row["status"] == "succeeded"
    assert (row["model"], row["cost_cents"]) == (RESULT["model"], 4)
    assert row["ended_at"] is not None and row["locked_until"] is None
    assets = await conn.fetch("select * from assets where user_id = $1 order by kind", user)
    assert [(a["kind"], a["storage_path"], a["bytes"]) for a in assets] == [
        ("edge_map", "u/j/edge.png", 10), ("pdf", "u/j/coloring_page.pdf", 20)]
    assert await conn.fetchval("select worker_complete_job($1, $2, $3)", *args) is True
    assert await conn.fetchval("select count(*) from assets where user_id = $1", user) == 2


async def test_complete_by_stranger_is_refused(conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    job_id = await insert_job(conn, user)
    await claim_one(conn, job_id)
    ok = await conn.fetchval("select worker_complete_job($1, $2, $3)", job_id, W2,
                             json.dumps(RESULT))
    assert ok is False
    assert (await job(conn, job_id))["status"] == "running"
    assert await conn.fetchval("select count(*) from assets") == 0
    queued = await insert_job(conn, user)
    assert await conn.fetchval("select worker_complete_job($1, $2, $3)", queued, W1,
                               json.dumps(RESULT)) is False


async def test_fail_with_retry_requeues_later(conn: asyncpg.Connection) -> None:
    user = await make_user(conn, balance=5)
    job_id = await insert_job(conn, user)
    await claim_one(conn, job_id)
    assert await fail(conn, job_id, retry=30) == "queued"
    row = await job(conn, job_id)
    assert (row["status"], row["attempts"], row["locked_by"]) == ("queued", 1, None)
    assert row["error"] == "It broke." and row["error_code"] == "boom"
    delay = await conn.fetchval("select extract(epoch from run_after - now()) from jobs where id = $1",
                                job_id)
    assert 25 < delay <= 30
    assert await claim_one(conn, job_id) == []
    assert await refunds(conn, job_id) == 0 and await balance(conn, user) == 4


async def test_fail_with_attempts_used_up_refunds(conn: asyncpg.Connection) -> None:
    user = await make_user(conn, balance=5)
    job_id = await insert_job(conn, user, max_attempts=2)
    for _ in range(2):
        await conn.execute("update jobs set run_after = now() where id = $1", job_id)
        await claim_one(conn, job_id)
        status = await fail(conn, job_id, retry=0)
    assert status == "failed"
    row = await job(conn, job_id)
    assert (row["status"], row["attempts"]) == ("failed", 2)
    assert await balance(conn, user) == 5 and await refunds(conn, job_id) == 1


async def test_fail_permanent_refunds_credits_charged_once(conn: asyncpg.Connection) -> None:
    user = await make_user(conn, balance=5)
    job_id = await insert_job(conn, user, credits_charged=3)
    await claim_one(conn, job_id)
    assert await fail(conn, job_id, retry=None) == "failed"
    assert await fail(conn, job_id, retry=None) == "failed"
    assert await fail(conn, job_id, retry=None, worker=W2) is None
    assert await balance(conn, user) == 4 + 3
    events = await conn.fetch("select * from credit_events where job_id = $1", job_id)
    assert [(e["delta"], e["reason"], e["user_id"]) for e in events] == [
        (3, "generation_failed", user)]
    row = await job(conn, job_id)
    assert row["error"] == "It broke." and row["ended_at"] is not None


async def test_fail_by_stranger_changes_nothing(conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    job_id = await insert_job(conn, user)
    await claim_one(conn, job_id)
    assert await fail(conn, job_id, retry=None, worker=W2) is None
    assert (await job(conn, job_id))["status"] == "running"
    assert await refunds(conn, job_id) == 0


async def test_fail_from_two_connections_refunds_once(db: Database) -> None:
    first, second = await asyncpg.connect(db.dsn), await asyncpg.connect(db.dsn)
    try:
        user = await make_user(first, balance=5)
        jobs = [await insert_job(first, user) for _ in range(20)]
        for job_id in jobs:
            await claim_one(first, job_id)
        for job_id in jobs:
            results = await asyncio.gather(fail(first, job_id, None), fail(second, job_id, None))
            assert list(results) == ["failed", "failed"]
        assert await balance(first, user) == 5
        assert await first.fetchval(
            "select count(*) from credit_events where user_id = $1 and job_id is not null", user) == 20
    finally:
        await first.close()
        await second.close()


async def test_release_requeues_without_counting(conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    job_id = await insert_job(conn, user)
    await claim_one(conn, job_id)
    assert await conn.fetchval("select worker_release_job($1, $2)", job_id, W2) is False
    assert await conn.fetchval("select worker_release_job($1, $2)", job_id, W1) is True
    row = await job(conn, job_id)
    assert (row["status"], row["attempts"], row["locked_by"]) == ("queued", 0, None)
    assert await conn.fetchval("select worker_release_job($1, $2)", job_id, W1) is False
    assert len(await claim_one(conn, job_id, W2)) == 1


async def test_claim_race_claims_every_job_once(db: Database) -> None:
    setup = await asyncpg.connect(db.dsn)
    try:
        user = await make_user(setup, balance=0)
        await setup.execute(
            """insert into jobs (user_id, params_json)
               select $1, '{"text_prompt": "x"}' from generate_series(1, 2000)""", user)
    finally:
        await setup.close()

    async def claimer(name: str) -> list[uuid.UUID]:
        conn = await asyncpg.connect(db.dsn)
        got: list[uuid.UUID] = []
        try:
            while rows := await conn.fetch("select id from worker_claim_jobs($1, 7, 60)", name):
                got.extend(r["id"] for r in rows)
        finally:
            await conn.close()
        return got

    claimed = await asyncio.gather(*(claimer(f"w{i}") for i in range(8)))
    flat = [job_id for part in claimed for job_id in part]
    assert len(flat) == 2000
    assert len(set(flat)) == 2000
    assert sum(1 for part in claimed if part) > 1


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize("call", [
    "select * from worker_claim_job(gen_random_uuid(), 'x', 60)",
    "select * from worker_claim_jobs('x', 1, 60)",
    "select worker_heartbeat(gen_random_uuid(), 'x', 60)",
    "select worker_complete_job(gen_random_uuid(), 'x', '{}')",
    "select worker_fail_job(gen_random_uuid(), 'x', 'e', 'c', null)",
    "select worker_release_job(gen_random_uuid(), 'x')",
    "select worker_reap_expired(1)",
])
async def test_api_roles_cannot_call_worker_functions(
        conn: asyncpg.Connection, role: str, call: str) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_role(conn, role, call)


async def test_service_role_can_call_worker_functions(conn: asyncpg.Connection) -> None:
    assert await as_role(conn, "service_role", "select worker_reap_expired(1) as n") == [(0,)]
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_role(conn, "service_role",
                      "select worker_refund_job(j) from jobs j limit 1")
