"""Applies the worker's migrations to a Postgres database (``realtime-worker migrate``).

Each applied migration is recorded in ``realtime_worker.schema_migrations`` with a checksum; an
advisory lock keeps two migrating processes from interleaving. The migrations are idempotent, so
re-applying one (``force=True``) is harmless.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import asyncpg

from realtime_worker import sql
from realtime_worker.errors import AdapterError, ConfigError, WorkerError

_LOCK_KEY = 0x5277_6B72  # "Rwkr"


@dataclass(frozen=True)
class Applied:
    version: str
    name: str
    skipped: bool


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def apply(conn: asyncpg.Connection, *, force: bool = False,
                harden: bool = False) -> list[Applied]:
    """Apply every migration not yet recorded (all of them with ``force``), in one transaction each.

    ``harden`` adds the opt-in hardening migrations (docs/security.md), applied last.
    """
    await conn.execute("select pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(sql.query("migration_history"))
        done = {r["version"] for r in await conn.fetch(sql.query("applied_versions"))}
        return [await _apply_one(conn, m, skip=m.version in done and not force)
                for m in sql.chosen(harden=harden)]
    finally:
        await conn.execute("select pg_advisory_unlock($1)", _LOCK_KEY)


async def _apply_one(conn: asyncpg.Connection, migration: sql.Migration, *, skip: bool) -> Applied:
    if not skip:
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(sql.query("record_migration"),
                               migration.version, migration.name, checksum(migration.sql))
    return Applied(migration.version, migration.name, skipped=skip)


BAD_URL = ("configuration error: DATABASE_URL is not a valid postgresql:// URL ({kind}); if the"
           " password holds '/', '#', '?' or '@', percent-encode them as %2F, %23, %3F, %40")


async def connect(dsn: str) -> asyncpg.Connection:
    """Connect to DATABASE_URL; a failure names the problem but never the URL or any part of it.

    asyncpg's own messages quote pieces of the URL (a misparsed password becomes the port, the
    database or a query field), so the library error is left out of the cause chain the CLI
    prints: only its type is kept.
    """
    try:
        return await asyncpg.connect(dsn)
    except ValueError as exc:  # asyncpg could not parse the URL (or an option in it)
        error: WorkerError = ConfigError(BAD_URL.format(kind=type(exc).__name__))
    except Exception as exc:  # refused, unreachable, time-out, rejected password, no such database
        error = AdapterError(f"cannot connect to DATABASE_URL: {type(exc).__name__}")
    raise error from None


async def migrate(dsn: str, *, force: bool = False, harden: bool = False) -> list[Applied]:
    """Connect to ``dsn`` and apply the migrations (and the hardening with ``harden``)."""
    conn = await connect(dsn)
    try:
        return await apply(conn, force=force, harden=harden)
    finally:
        await conn.close()
