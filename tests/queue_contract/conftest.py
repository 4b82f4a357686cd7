"""The ``harness`` fixture: every contract test runs once per queue implementation.

The SQL queue's database and devstack are started once for the module (one event loop for the
module, hence the module-scoped ``anyio_backend``); each test starts from empty job tables.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from realtime_worker.queue import SupabaseQueue
from realtime_worker.rpc import open_rpc
from realtime_worker_devstack.server import running
from tests.conftest import Database, _fresh
from tests.queue_contract.harness import Harness, MemoryHarness, SqlHarness

SqlParts = tuple[SupabaseQueue, asyncpg.Connection]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", params=[pytest.param("memory", marks=pytest.mark.unit),
                                        pytest.param("sql", marks=pytest.mark.integration)])
def database(request: pytest.FixtureRequest) -> Iterator[Database | None]:
    """A fresh database for the SQL queue; none for the in-memory one."""
    if request.param == "memory":
        yield None
        return
    yield from _fresh(request.getfixturevalue("pg_server"), request.getfixturevalue("template_db"))


@pytest.fixture(scope="module")
async def sql_parts(database: Database | None,
                    tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SqlParts | None]:
    if database is None:
        yield None
        return
    data_dir: Path = tmp_path_factory.mktemp("devstack")
    conn = await asyncpg.connect(database.dsn)
    try:
        async with running(database_dsn=database.dsn, data_dir=data_dir) as stack, \
                open_rpc(stack.url, stack.service_key) as rpc:
            yield SupabaseQueue(rpc), conn
    finally:
        await conn.close()


@pytest.fixture
async def harness(sql_parts: SqlParts | None) -> Harness:
    if sql_parts is None:
        return MemoryHarness()
    queue, conn = sql_parts
    # claim_jobs, reap_expired and the clock shift act on every row: start from none.
    await conn.execute("truncate public.jobs, public.credit_events, public.assets,"
                       " realtime_worker.claim_turns cascade")
    return SqlHarness(queue, conn)
