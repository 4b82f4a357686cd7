"""One devstack and one real worker process per module and mode, shared by its tests.

The database is the faithful app schema plus the worker's migrations (the session template);
the worker is ``realtime-worker run`` with the production processor (fake Gemini on the
devstack, real Storage, imaging and PDF). Every test signs in its own user, so tests share the
stack without sharing rows. Two modes: ``as_today`` (the routes' debit + insert as written) and
``create_job`` (the routes switched to ``rpc('create_job')`` on a database hardened by
``realtime-worker migrate --harden``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import asyncpg
import pytest
from supabase import AsyncClient

from realtime_worker.cli import DEFAULT_PROCESSOR
from realtime_worker_devstack import postgres
from realtime_worker_devstack.server import Devstack, running
from tests.app_contract.routes import Mode, SignedIn
from tests.conftest import RUN_TOKEN
from tests.devstack_fixtures import signed_in, supabase_client
from tests.helpers import make_user
from tests.waiting import wait_for
from tests.workers import ready, spawn_worker, subprocess_env

MODES = [pytest.param("as_today", id="as_today"), pytest.param("create_job", id="create_job")]

WORKER_ENV = {"WORKER_ID": "app-contract", "SWEEP_INTERVAL_SECONDS": "1", "MAX_CONCURRENT_JOBS": "4",
              "IMAGE_THREADS": "1", "GEMINI_TIMEOUT_SECONDS": "20", "LOG_LEVEL": "INFO"}

SignIn = Callable[..., Awaitable[SignedIn]]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """One event loop per module, so the devstack and the worker outlive a single test."""
    return "asyncio"


@pytest.fixture(scope="module", params=MODES)
def mode(request: pytest.FixtureRequest) -> Mode:
    value: Mode = request.param
    return value


@pytest.fixture(scope="module")
def app_db(pg_server: postgres.PostgresServer, template_db: str, mode: Mode,
           request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"rw_{RUN_TOKEN}_{request.module.__name__.rsplit('.', 1)[-1]}_{mode}"
    dsn = asyncio.run(postgres.create_database(pg_server.dsn, name, template=template_db))
    try:
        yield dsn
    finally:
        asyncio.run(postgres.drop_database(pg_server.dsn, name))


async def harden(dsn: str) -> None:
    """``realtime-worker migrate --harden``, then a check that ``create_job`` exists."""
    env = {**os.environ, "DATABASE_URL": dsn}
    done = await anyio.run_process([sys.executable, "-m", "realtime_worker", "migrate", "--harden"],
                                   env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("select to_regprocedure('public.create_job(jsonb)')") is not None
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def stack(app_db: str, mode: Mode, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Devstack]:
    async with running(database_dsn=app_db, data_dir=tmp_path_factory.mktemp("devstack")) as devstack:
        if mode == "create_job":
            await harden(app_db)
        yield devstack


@pytest.fixture(scope="module")
async def worker(stack: Devstack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Path]:
    """``realtime-worker run`` (realtime mode, production processor); yields its log file."""
    env = subprocess_env(stack, **WORKER_ENV)
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    process = await spawn_worker(env, log=log, processor=DEFAULT_PROCESSOR)
    try:
        await wait_for(lambda: ready(env["PORT"]), within=30, step=0.1, what="the worker's /ready")
        yield log
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        with anyio.fail_after(15):
            await process.wait()


@pytest.fixture(scope="module")
async def service(stack: Devstack) -> AsyncIterator[AsyncClient]:
    async with supabase_client(stack.url, stack.service_key) as client:
        yield client


@pytest.fixture(scope="module")
async def owner(app_db: str) -> AsyncIterator[asyncpg.Connection]:
    """The database owner's connection: users are created as the app's sign-up creates them."""
    conn = await asyncpg.connect(app_db)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def sign_in(stack: Devstack, owner: asyncpg.Connection, worker: Path,
                  mode: Mode) -> AsyncIterator[SignIn]:
    """``await sign_in(balance=…)``: a new user and the app's client for their session (the anon
    key + their Supabase-shaped access token), with the worker running."""
    async with AsyncExitStack() as clients:

        async def new_session(balance: int = 10) -> SignedIn:
            user_id = await make_user(owner, balance=balance)
            client = await clients.enter_async_context(signed_in(stack, user_id))
            return SignedIn(client, str(user_id), mode)

        yield new_session
