"""Fair claiming (issue 18), as a property over arrival orders: the SQL function and
``InMemoryQueue`` claim the same jobs in the same order, and every user's first job is claimed
within the first ceil(users / batch) batches, however large another user's burst."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta
from uuid import UUID

import anyio
import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime_worker.testing import FakeClock, InMemoryQueue
from tests.conftest import Database
from tests.helpers import insert_job, make_user

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CLAIM = "select id from worker_claim_jobs($1, $2, 60)"
RESET = "truncate public.jobs, public.credit_events, realtime_worker.claim_turns cascade"


@st.composite
def arrivals(draw: st.DrawFn) -> list[str]:
    """A burst of user a, the single job of b, a few of c, in any order."""
    jobs = ["a"] * draw(st.integers(1, 25)) + ["b"] + ["c"] * draw(st.integers(0, 4))
    return draw(st.permutations(jobs))


async def sql_order(conn: asyncpg.Connection, users: dict[str, UUID], labels: list[str],
                    batch: int) -> list[list[str]]:
    await conn.execute(RESET)
    owner = {label: users[label] for label in set(labels)}
    start = await conn.fetchval("select now() - interval '1 hour'")
    ids = {}
    for n, label in enumerate(labels):
        job_id = await insert_job(conn, owner[label], created_at=start + timedelta(seconds=n))
        ids[job_id] = label
    return [[ids[r["id"]] for r in await conn.fetch(CLAIM, "w", batch)] for _ in labels]


def memory_order(labels: list[str], batch: int) -> list[list[str]]:
    clock = FakeClock()
    queue = InMemoryQueue(clock)
    users = {label: UUID(int=i + 1) for i, label in enumerate("abc")}
    ids = {}
    for label in labels:
        ids[queue.add(user_id=users[label])] = label
        clock.advance(1)

    async def claims() -> list[list[str]]:
        return [[ids[job.id] for job in await queue.claim_jobs("w", batch, 60)] for _ in labels]

    return anyio.run(claims)


Sql = tuple[asyncpg.Connection, dict[str, UUID], anyio.from_thread.BlockingPortal]


@pytest.fixture
def sql(db: Database) -> Iterator[Sql]:
    with anyio.from_thread.start_blocking_portal() as portal:
        conn = portal.call(asyncpg.connect, db.dsn)
        users = {label: portal.call(make_user, conn) for label in "abc"}
        try:
            yield conn, users, portal
        finally:
            portal.call(conn.close)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=arrivals(), batch=st.integers(1, 4))
def test_claims_take_turns_and_both_queues_agree(sql: Sql, labels: list[str], batch: int) -> None:
    conn, users, portal = sql
    from_sql = portal.call(sql_order, conn, users, labels, batch)
    in_memory = memory_order(labels, batch)
    # Within a batch the database returns rows in no promised order: compare batches as sets.
    assert [sorted(b) for b in from_sql] == [sorted(b) for b in in_memory]
    assert sorted(label for b in from_sql for label in b) == sorted(labels)  # each job once
    first_batch_of = {label: next(i for i, b in enumerate(from_sql) if label in b) for label in set(labels)}
    assert all(n < math.ceil(len(first_batch_of) / batch) for n in first_batch_of.values()), (
        first_batch_of, from_sql)
