"""Issue 15's attacks, sent as an attacker would: the official client with the user's own JWT,
through the devstack's PostgREST, on the app's real RLS (fixtures/app_schema.sql).

Each attack runs twice: on the schema before migration 0004 (``before``: the attack works, with
the figures of the issue) and on today's migrations (``after``: refused or harmless).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from postgrest.exceptions import APIError

from realtime_worker_devstack.server import Devstack
from tests.conftest import Database
from tests.devstack_fixtures import rows
from tests.integration.test_pipeline_devstack import run_worker_once
from tests.security.support import (
    SIGNUP_CREDITS,
    as_user,
    balance_of,
    claim,
    install_before_0004,
    sign_up,
    stack_on,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Inheritance class Aiohttp:DeprecationWarning"),
]

TEXT = {"text_prompt": "a tiger eating a burger", "complexity": "standard", "line_thickness": "medium"}


@pytest.fixture(params=["before", "after"])
def schema_db(request: pytest.FixtureRequest) -> tuple[str, Database]:
    """``before``: the schema without migration 0004; ``after``: every migration."""
    if request.param == "before":
        database: Database = request.getfixturevalue("empty_db")
        asyncio.run(install_before_0004(database.dsn))
    else:
        database = request.getfixturevalue("db")
    return request.param, database


@pytest.fixture
async def schema(schema_db: tuple[str, Database],
                 tmp_path: Path) -> AsyncIterator[tuple[str, Devstack, asyncpg.Connection]]:
    """(``before`` or ``after``, a devstack over that schema, an owner connection)."""
    version, database = schema_db
    conn = await asyncpg.connect(database.dsn)
    try:
        async with stack_on(database.dsn, tmp_path / "devstack") as stack:
            yield version, stack, conn
    finally:
        await conn.close()


async def insert_directly(stack: Devstack, user: uuid.UUID, jobs: list[dict[str, Any]]) -> list[uuid.UUID]:
    """One HTTP request inserting ``jobs`` as the signed-in ``user`` (POST /rest/v1/jobs)."""
    async with as_user(stack, user) as client:
        created = await client.table("jobs").insert([{"user_id": str(user), **j} for j in jobs]).execute()
    return [uuid.UUID(r["id"]) for r in rows(created.data)]


async def test_100_direct_inserts_of_failing_jobs_mint_no_credits(
        schema: tuple[str, Devstack, asyncpg.Connection]) -> None:
    version, stack, conn = schema
    user = await sign_up(conn, balance=0)

    jobs = await insert_directly(stack, user, [{"params_json": {}}] * 100)  # nothing to draw
    await run_worker_once(stack)

    statuses = await conn.fetch("select status::text, error_code from public.jobs where id = any($1)", jobs)
    assert {(r["status"], r["error_code"]) for r in statuses} == {("failed", "invalid_params")}
    gained = await balance_of(conn, user)
    assert gained == {"before": 100, "after": 0}[version]


async def test_a_back_dated_job_does_not_jump_the_queue(
        schema: tuple[str, Devstack, asyncpg.Connection]) -> None:
    version, stack, conn = schema
    others, attacker = await sign_up(conn), await sign_up(conn)
    for _ in range(3):
        await insert_directly(stack, others, [{"status": "queued", "params_json": TEXT}])
    [forged] = await insert_directly(stack, attacker, [
        {"status": "queued", "params_json": TEXT, "created_at": "2000-01-01T00:00:00Z"}])

    order = await conn.fetch("select id from public.jobs where status = 'queued' order by created_at, id")
    position = [r["id"] for r in order].index(forged) + 1
    assert position == {"before": 1, "after": 4}[version]
    first = await conn.fetchrow("select id, user_id from public.worker_claim_jobs('w', 1, 60)")
    assert first is not None
    assert first["user_id"] == {"before": attacker, "after": others}[version]


@pytest.mark.parametrize("status", ["running", "succeeded", "failed"])
async def test_a_job_cannot_be_inserted_in_a_state_of_the_worker(
        schema: tuple[str, Devstack, asyncpg.Connection], status: str) -> None:
    version, stack, conn = schema
    user = await sign_up(conn)
    if version == "before":
        [job_id] = await insert_directly(stack, user, [{"status": status, "params_json": TEXT}])
        assert await conn.fetchval("select status::text from public.jobs where id = $1", job_id) == status
        return
    with pytest.raises(APIError) as refused:
        await insert_directly(stack, user, [{"status": status, "params_json": TEXT}])
    assert refused.value.code == "42501"
    assert f"a new job starts queued, not {status}" in str(refused.value.message)
    assert await conn.fetchval("select count(*) from public.jobs where user_id = $1", user) == 0


async def succeeded_job(conn: asyncpg.Connection, user: uuid.UUID) -> uuid.UUID:
    """A job the worker finished (inserted and completed by the owner, as the worker would)."""
    job_id: uuid.UUID = await conn.fetchval(
        "insert into public.jobs (user_id, params_json) values ($1, $2::jsonb) returning id",
        user, '{"text_prompt": "a cat"}')
    assert await claim(conn, job_id)
    assert await conn.fetchval("select public.worker_complete_job($1, 'w', '{}'::jsonb)", job_id)
    return job_id


@pytest.mark.parametrize("change", [{"status": "queued"}, {"params_json": {"text_prompt": "a dog"}},
                                    {"created_at": "2000-01-01T00:00:00Z"}])
async def test_a_finished_job_cannot_be_reset_or_rewritten(
        schema: tuple[str, Devstack, asyncpg.Connection], change: dict[str, Any]) -> None:
    version, stack, conn = schema
    user = await sign_up(conn)
    job_id = await succeeded_job(conn, user)
    before = await conn.fetchrow("select * from public.jobs where id = $1", job_id)
    async with as_user(stack, user) as client:
        request = client.table("jobs").update(change).eq("id", str(job_id))
        if version == "before":
            assert len(rows((await request.execute()).data)) == 1
        else:
            with pytest.raises(APIError) as refused:
                await request.execute()
            assert refused.value.code == "42501"
            assert f"jobs.{next(iter(change))} cannot be changed" in str(refused.value.message)
    after = await conn.fetchrow("select * from public.jobs where id = $1", job_id)
    column = next(iter(change))
    assert before is not None and after is not None
    assert (after[column] == before[column]) is (version == "after")


async def test_12_mb_of_params_are_refused(schema: tuple[str, Devstack, asyncpg.Connection]) -> None:
    version, stack, conn = schema
    user = await sign_up(conn)
    huge = {**TEXT, "padding": "x" * 12_000_000}
    if version == "before":
        [job_id] = await insert_directly(stack, user, [{"params_json": huge}])
        size = await conn.fetchval(
            "select octet_length(params_json::text) from public.jobs where id = $1", job_id)
        assert size > 12_000_000
        return
    with pytest.raises(APIError) as refused:
        await insert_directly(stack, user, [{"params_json": huge}])
    assert refused.value.code == "22023"
    assert "params_json is too large" in str(refused.value.message)
    assert "at most 16384" in str(refused.value.message)
    assert await balance_of(conn, user) == SIGNUP_CREDITS
