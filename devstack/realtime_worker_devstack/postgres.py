"""The devstack's Postgres: the server in ``DATABASE_URL``, else an embedded one from ``pgserver``.

Also installs the Supabase base schema and the app's schema from ``fixtures/`` and the worker's
migration, in the order a real project sees them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from realtime_worker import migrate

BASE_SQL = "supabase_base.sql"
APP_SQL = "app_schema.sql"


def fixtures_dir() -> Path:
    """``fixtures/`` at the root of the repository: this package is a workspace member that lives
    (and runs) in the source tree, beside the fixtures it installs."""
    folder = Path(__file__).resolve().parents[2] / "fixtures"
    if not (folder / BASE_SQL).is_file():
        raise FileNotFoundError(f"{folder} with the Supabase base schema was not found")
    return folder


@dataclass
class PostgresServer:
    """A running server: ``dsn`` names its ``postgres`` database."""

    dsn: str
    embedded: Any = None

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.cleanup()
            self.embedded = None

    def database_dsn(self, name: str) -> str:
        """The DSN of another database on the same server."""
        return with_database(self.dsn, name)


def with_database(dsn: str, name: str) -> str:
    head, sep, query = dsn.partition("?")
    base = head.rsplit("/", 1)[0] if head.count("/") > 2 else head
    return f"{base}/{name}{sep}{query}"


def start_embedded(data_dir: Path, *, cleanup: str | None = "stop") -> PostgresServer:
    """Start (or reuse) an embedded server whose data lives in ``data_dir``."""
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from pgserver import postgres_server  # a development dependency, absent in production

    data_dir.mkdir(parents=True, exist_ok=True)
    server = postgres_server.get_server(data_dir, cleanup_mode=cleanup)
    return PostgresServer(dsn=str(server.get_uri()), embedded=server)


async def install_schema(conn: asyncpg.Connection) -> None:
    """Supabase base, then the app's schema, then the worker's migration."""
    folder = fixtures_dir()
    for name in (BASE_SQL, APP_SQL):
        await conn.execute((folder / name).read_text("utf-8"))
    await migrate.apply(conn)


async def create_database(admin_dsn: str, name: str, *, template: str | None = None) -> str:
    """Create database ``name`` (from ``template`` when given) and return its DSN."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        clause = f' template "{template}"' if template else ""
        await conn.execute(f'create database "{name}"{clause}')
    finally:
        await conn.close()
    return with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await conn.close()

