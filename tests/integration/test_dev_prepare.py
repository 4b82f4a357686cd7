"""``realtime-worker dev`` prepares the database for the worker it starts: with
``WAKEUP_SOURCE=broadcast`` the Broadcast migration (0020) is applied, so a queued job sends the
wake-up that worker listens for (``dev.prepare_wakeup``, called by ``run_beside``)."""

from __future__ import annotations

import asyncpg
import pytest

from realtime_worker_devstack import dev
from realtime_worker_devstack.server import Devstack
from tests.helpers import insert_job, make_user
from tests.integration.test_migration import broadcast_objects

pytestmark = pytest.mark.integration

TRIGGER = ("worker_broadcast_job_insert",)
POLICIES = {"worker_jobs_topic_service_role", "worker_jobs_topic_not_for_users"}


async def sent_job_ids(conn: asyncpg.Connection) -> list[str]:
    return [row[0] for row in await conn.fetch(
        "select payload->>'job_id' from realtime.messages where topic = 'worker:jobs'")]


async def test_dev_applies_the_broadcast_migration(devstack: Devstack, conn: asyncpg.Connection) -> None:
    settings = dev.stack_worker_settings(devstack, {}, WAKEUP_SOURCE="broadcast", PORT=0)
    await dev.prepare_wakeup(devstack, settings)
    triggers, policies = await broadcast_objects(conn)
    assert TRIGGER in triggers
    assert {policy[0] for policy in policies} >= POLICIES
    job_id = await insert_job(conn, await make_user(conn))
    assert await sent_job_ids(conn) == [str(job_id)]


async def test_dev_leaves_postgres_changes_alone(devstack: Devstack, conn: asyncpg.Connection) -> None:
    settings = dev.stack_worker_settings(devstack, {}, WAKEUP_SOURCE="postgres_changes", PORT=0)
    await dev.prepare_wakeup(devstack, settings)
    triggers, policies = await broadcast_objects(conn)
    assert TRIGGER not in triggers and not POLICIES & {policy[0] for policy in policies}
    await insert_job(conn, await make_user(conn))
    assert await sent_job_ids(conn) == []
