"""Refunds never exceed charges (docs/security.md "The refund rule"): a job charged by create_job
(or by a trusted writer) gets back exactly its recorded charge; a job a user inserted directly
gets back one credit, and only when the failure is ours."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import pytest

from realtime_worker import migrate
from realtime_worker_devstack.server import Devstack
from tests.conftest import Database
from tests.devstack_fixtures import rows
from tests.integration.test_pipeline_devstack import run_worker_once
from tests.security.support import (
    SIGNUP_CREDITS,
    as_user,
    balance_of,
    claim,
    exhaust_lease,
    fail,
    install_before_0004,
    ledger_total,
    sign_up,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Inheritance class Aiohttp:DeprecationWarning"),
]

TEXT = {"text_prompt": "a tiger eating a burger", "complexity": "standard", "line_thickness": "medium"}


async def direct(stack: Devstack, user: uuid.UUID, params: object) -> uuid.UUID:
    async with as_user(stack, user) as client:
        created = await client.table("jobs").insert(
            {"user_id": str(user), "status": "queued", "params_json": params}).execute()
    return uuid.UUID(rows(created.data)[0]["id"])


async def through_create_job(stack: Devstack, user: uuid.UUID, params: object) -> uuid.UUID:
    async with as_user(stack, user) as client:
        answer = await client.rpc("create_job", {"p_params": params}).execute()
    assert isinstance(answer.data, dict)
    return uuid.UUID(answer.data["id"])


async def refunded(conn: asyncpg.Connection, job_id: uuid.UUID) -> int:
    total: int = await conn.fetchval("""select coalesce(sum(delta), 0) from public.credit_events
                                        where job_id = $1 and reason = 'generation_failed'""", job_id)
    return total


@pytest.mark.parametrize(("code", "refund"), [
    ("invalid_params", 0), ("input_not_found", 0), ("input_unreadable", 0), ("content_refused", 0),
    ("gemini_unavailable", 1), ("rate_limited", 1), ("internal", 1), ("storage_unavailable", 1),
])
async def test_a_direct_job_is_refunded_one_credit_only_for_our_failures(
        devstack: Devstack, conn: asyncpg.Connection, code: str, refund: int) -> None:
    user = await sign_up(conn)
    job_id = await direct(devstack, user, TEXT)
    assert await claim(conn, job_id)
    assert await fail(conn, job_id, code) == "failed"
    assert await fail(conn, job_id, code) == "failed"  # a second report refunds nothing more
    assert await refunded(conn, job_id) == refund
    assert await balance_of(conn, user) == SIGNUP_CREDITS + refund


async def test_a_direct_job_whose_leases_run_out_is_refunded_once(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    user = await sign_up(conn)
    job_id = await direct(devstack, user, TEXT)
    await exhaust_lease(conn, job_id)
    row = await conn.fetchrow("select status::text, error_code from public.jobs where id = $1", job_id)
    assert row is not None and (row["status"], row["error_code"]) == ("failed", "lease_expired")
    assert await refunded(conn, job_id) == 1


@pytest.mark.parametrize("code", ["content_refused", "invalid_params", "gemini_unavailable"])
async def test_a_create_job_job_gets_back_exactly_its_charge_whatever_the_failure(
        devstack: Devstack, conn: asyncpg.Connection, code: str) -> None:
    user = await sign_up(conn)
    job_id = await through_create_job(devstack, user, TEXT)
    assert await claim(conn, job_id)
    assert await fail(conn, job_id, code) == "failed"
    assert await refunded(conn, job_id) == 1
    assert await balance_of(conn, user) == SIGNUP_CREDITS == await ledger_total(conn, user)


async def test_the_worker_refunds_a_paid_photo_job_and_not_the_same_job_inserted_directly(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    """The real worker: the photo's asset row exists but its object does not (input_not_found)."""
    user = await sign_up(conn)
    original: uuid.UUID = await conn.fetchval("""insert into public.assets (user_id, kind, storage_path)
        values ($1, 'original', $2) returning id""", user, f"{user}/gone.jpg")
    photo = {"asset_id": str(original), "complexity": "simple", "line_thickness": "thin"}
    paid, unpaid = await through_create_job(devstack, user, photo), await direct(devstack, user, photo)
    await run_worker_once(devstack)
    codes = await conn.fetch("select error_code from public.jobs where id = any($1)", [paid, unpaid])
    assert {r["error_code"] for r in codes} == {"input_not_found"}
    assert (await refunded(conn, paid), await refunded(conn, unpaid)) == (1, 0)
    assert await balance_of(conn, user) == SIGNUP_CREDITS


async def test_a_user_cannot_relabel_a_direct_job_as_paid(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    user = await sign_up(conn)
    job_id = await direct(devstack, user, {**TEXT, "charged_via": "x"})
    async with as_user(devstack, user) as client:
        await client.table("jobs").update(
            {"charged_via": "create_job", "credits_charged": 50}).eq("id", str(job_id)).execute()
    row = await conn.fetchrow("select charged_via, credits_charged from public.jobs where id = $1", job_id)
    assert row is not None and (row["charged_via"], row["credits_charged"]) == ("direct", 1)


async def test_jobs_older_than_0004_are_direct_and_new_trusted_rows_are_service(empty_db: Database) -> None:
    await install_before_0004(empty_db.dsn)
    conn = await asyncpg.connect(empty_db.dsn)
    try:
        user = await sign_up(conn)
        old = await conn.fetchval(
            "insert into public.jobs (user_id, params_json) values ($1, '{}') returning id", user)
        await conn.execute("delete from realtime_worker.schema_migrations where version = '0004'")
        applied = await migrate.apply(conn)
        assert [a.version for a in applied if not a.skipped] == ["0004"]
        new = await conn.fetchval(
            "insert into public.jobs (user_id, params_json) values ($1, '{}') returning id", user)
        found = await conn.fetch("select id, charged_via from public.jobs")
        assert {r["id"]: r["charged_via"] for r in found} == {old: "direct", new: "service"}
    finally:
        await conn.close()


def operator_checks() -> list[str]:
    """The SQL block of docs/security.md "Operator's checks for minted credits", one per query."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text("utf-8")
    section = text.split("## Operator's checks for minted credits", 1)[1]
    block = section.split("```sql", 1)[1].split("```", 1)[0]
    return [q.strip() for q in block.split(";\n") if q.strip()]


async def test_the_operators_checks_find_minted_credits(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    honest, minter = await sign_up(conn), await sign_up(conn)
    for user in (honest, minter):
        job_id = await through_create_job(devstack, user, TEXT)
        assert await claim(conn, job_id)
        await fail(conn, job_id, "gemini_unavailable")
    checks = operator_checks()
    assert len(checks) == 3
    for query in checks:
        assert await conn.fetch(query) == [], query
    direct_job = await direct(devstack, minter, TEXT)
    await conn.execute("""insert into public.credit_events (user_id, delta, reason, job_id)
                          values ($1, 5, 'generation_failed', $2)""", minter, direct_job)
    async with as_user(devstack, minter) as client:  # the app's RLS: any balance, directly
        await client.table("credits").update({"balance": 99}).eq("user_id", str(minter)).execute()
    found = [[r[0] for r in await conn.fetch(query)] for query in checks]
    assert found == [[minter], [direct_job], [minter]]
