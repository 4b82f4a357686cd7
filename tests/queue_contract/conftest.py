"""The ``harness`` fixture: every contract test runs once per queue implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from realtime_worker.devstack.server import running
from realtime_worker.queue import SupabaseQueue
from tests.conftest import Database
from tests.devstack_fixtures import supabase_client
from tests.queue_contract.harness import Harness, MemoryHarness, SqlHarness


@pytest.fixture(params=[pytest.param("memory", marks=pytest.mark.unit),
                        pytest.param("sql", marks=pytest.mark.integration)])
def database(request: pytest.FixtureRequest) -> Database | None:
    """A fresh database for the SQL queue (a sync fixture: ``db`` starts its own event loop)."""
    if request.param == "memory":
        return None
    found: Database = request.getfixturevalue("db")
    return found


@pytest.fixture
async def harness(database: Database | None, tmp_path: Path) -> AsyncIterator[Harness]:
    if database is None:
        yield MemoryHarness()
        return
    conn = await asyncpg.connect(database.dsn)
    try:
        async with running(database_dsn=database.dsn, data_dir=tmp_path / "devstack") as stack, \
                supabase_client(stack.url, stack.service_key) as client:
            yield SqlHarness(SupabaseQueue.from_client(client), conn)
    finally:
        await conn.close()
