"""Test harness: a real Postgres for every test that needs one.

``DATABASE_URL`` names a server to use; without it an embedded server from ``pgserver`` is
started for the run. A template database gets the Supabase base, the app's schema and the
worker's migration once; each test gets a fresh copy of it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from realtime_worker_devstack import postgres

RUN_TOKEN = secrets.token_hex(3)

pytest_plugins = ["tests.devstack_fixtures"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[postgres.PostgresServer]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield postgres.PostgresServer(dsn=url)
        return
    # Not under pytest's temp folder: when tests run as root the server runs as a separate user,
    # and every new pytest session resets that folder to owner-only access.
    folder = Path(tempfile.mkdtemp(prefix="rw-pgdata-"))
    folder.chmod(0o755)
    server = postgres.start_embedded(folder / "data", cleanup="delete")
    try:
        yield server
    finally:
        server.stop()


async def _build_template(admin_dsn: str, name: str) -> None:
    dsn = await postgres.create_database(admin_dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        await postgres.install_schema(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db(pg_server: postgres.PostgresServer) -> Iterator[str]:
    name = f"rw_{RUN_TOKEN}_template"
    asyncio.run(_build_template(pg_server.dsn, name))
    try:
        yield name
    finally:
        asyncio.run(postgres.drop_database(pg_server.dsn, name))


@dataclass(frozen=True)
class Database:
    name: str
    dsn: str
    admin_dsn: str


_counter = iter(range(1_000_000))


def _fresh(pg_server: postgres.PostgresServer, template: str | None) -> Iterator[Database]:
    name = f"rw_{RUN_TOKEN}_{next(_counter)}"
    dsn = asyncio.run(postgres.create_database(pg_server.dsn, name, template=template))
    try:
        yield Database(name, dsn, pg_server.dsn)
    finally:
        asyncio.run(postgres.drop_database(pg_server.dsn, name))


@pytest.fixture
def db(pg_server: postgres.PostgresServer, template_db: str) -> Iterator[Database]:
    """A fresh database with the base schema, the app's schema and the worker's migration."""
    yield from _fresh(pg_server, template_db)


@pytest.fixture
def empty_db(pg_server: postgres.PostgresServer) -> Iterator[Database]:
    """A fresh, empty database (for migration tests)."""
    yield from _fresh(pg_server, None)


@pytest.fixture
async def conn(db: Database) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db.dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def fixtures_path() -> Path:
    return postgres.fixtures_dir()
