"""Claiming stays an index lookup with a million finished jobs in the table.

The plans checked are those of the functions' own statements, read from ``pg_proc``, so a
change to a function that loses its index fails here.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from bench.claim_scale import add_finished_jobs
from realtime_worker_devstack import postgres
from tests.conftest import RUN_TOKEN
from tests.helpers import insert_job, job, make_user

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

FINISHED = 1_000_000
QUEUED_INDEX = "jobs_queued_created_at_idx"
QUEUED_BY_USER_INDEX = "jobs_queued_user_created_at_idx"  # the turns between users (0012)
RUNNING_INDEX = "jobs_running_locked_until_idx"


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


async def explain(conn: asyncpg.Connection, statement: str, *args: Any) -> list[dict[str, Any]]:
    raw = await conn.fetchval(f"explain (format json) {statement}", *args)
    document = json.loads(raw) if isinstance(raw, str) else raw
    return list(plan_nodes(document[0]["Plan"]))


def scans_of_jobs(nodes: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(n["Node Type"], n.get("Index Name")) for n in nodes
            if n.get("Relation Name") == "jobs" and n["Node Type"].endswith("Scan")]


async def function_body(conn: asyncpg.Connection, name: str) -> str:
    """The function's statement (a plpgsql body's ``return query`` statement) with its named
    parameters turned into ``$n`` placeholders."""
    row = await conn.fetchrow(
        "select prosrc, proargnames from pg_proc where proname = $1 and "
        "pronamespace = 'public'::regnamespace", name)
    assert row is not None
    body: str = row["prosrc"]
    if "return query" in body:
        body = body.split("return query", 1)[1].rsplit(";", 1)[0]
    for position, arg in enumerate(row["proargnames"], start=1):
        body = re.sub(rf"\b{arg}\b", f"${position}", body)
    return body


async def build(dsn: str) -> list[uuid.UUID]:
    conn = await asyncpg.connect(dsn)
    try:
        user = await make_user(conn, balance=10)
        await add_finished_jobs(conn, user, 1, FINISHED, vacuum=False)
        queued = [await insert_job(conn, user) for _ in range(3)]
        for age, job_id in zip((3, 2, 1), queued, strict=True):
            await conn.execute(
                "update jobs set created_at = now() - make_interval(mins => $2) where id = $1",
                job_id, age)
        assert await conn.fetchval("select count(*) from public.jobs") == FINISHED + 3
        return queued
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def big_db(pg_server: postgres.PostgresServer, template_db: str) -> Iterator[tuple[str, list[uuid.UUID]]]:
    """One database for the module (filling it takes seconds): a million finished jobs of one
    user, then three queued ones, oldest first. Tests that change rows roll back."""
    name = f"rw_{RUN_TOKEN}_scale"
    dsn = asyncio.run(postgres.create_database(pg_server.dsn, name, template=template_db))
    try:
        yield dsn, asyncio.run(build(dsn))
    finally:
        asyncio.run(postgres.drop_database(pg_server.dsn, name))


Big = tuple[asyncpg.Connection, list[uuid.UUID]]


@pytest.fixture
async def big(big_db: tuple[str, list[uuid.UUID]]) -> AsyncIterator[Big]:
    """A connection to the shared database inside a transaction that is rolled back."""
    dsn, queued = big_db
    conn = await asyncpg.connect(dsn)
    transaction = conn.transaction()
    await transaction.start()
    try:
        yield conn, queued
    finally:
        await transaction.rollback()
        await conn.close()


async def test_claim_jobs_uses_the_queued_partial_index(big: Big) -> None:
    conn = big[0]
    body = await function_body(conn, "worker_claim_jobs")
    nodes = await explain(conn, body, "w", 10, 60)
    scans = scans_of_jobs(nodes)
    # Queued jobs through their partial indexes (the oldest, and each user's head), then the
    # chosen rows by primary key: never a scan of the finished ones.
    assert {name for _, name in scans} == {QUEUED_INDEX, QUEUED_BY_USER_INDEX, "jobs_pkey"}, scans
    assert all(kind in ("Index Scan", "Index Only Scan") for kind, _ in scans), scans


async def test_claim_job_by_id_uses_an_index(big: Big) -> None:
    conn, queued = big
    body = await function_body(conn, "worker_claim_job")
    scans = scans_of_jobs(await explain(conn, body, queued[0], "w", 60))
    assert scans and all(kind in ("Index Scan", "Index Only Scan") for kind, _ in scans), scans
    assert {name for _, name in scans} <= {QUEUED_INDEX, QUEUED_BY_USER_INDEX, "jobs_pkey"}, scans


async def test_reap_uses_the_running_partial_index(big: Big) -> None:
    conn = big[0]
    body = await function_body(conn, "worker_reap_expired")
    found = re.search(r"\bfor\s+j\s+in\s+(select .*?)\s+loop\b", body, re.S | re.I)
    assert found, "the reap loop's query was not found in worker_reap_expired"
    scans = scans_of_jobs(await explain(conn, found[1], 100))
    assert scans == [("Index Scan", RUNNING_INDEX)], scans


async def test_claim_skips_a_million_finished_jobs_correctly(big: Big) -> None:
    conn, queued = big
    first, second, third = queued
    rows = await conn.fetch("select id from worker_claim_jobs('w1', 2, 60)")
    assert [r["id"] for r in rows] == [first, second]
    by_id = await conn.fetch("select id from worker_claim_job($1, 'w2', 60)", third)
    assert [r["id"] for r in by_id] == [third]
    assert await conn.fetch("select id from worker_claim_jobs('w3', 10, 60)") == []
    await conn.execute("update jobs set locked_until = now() - interval '1 s' where id = $1", second)
    assert await conn.fetchval("select worker_reap_expired(100)") == 1
    assert (await job(conn, second))["status"] == "queued"
    assert await conn.fetchval("select count(*) from jobs where status = 'running'") == 2
