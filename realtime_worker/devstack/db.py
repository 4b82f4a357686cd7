"""The devstack's database access: every request runs under the role of its key.

``as_role`` opens a transaction, switches to the key's role with ``set local role`` and publishes
the claims as ``request.jwt.claims`` (plus the ``.sub``/``.role`` shortcuts), exactly as PostgREST
does, so grants, ``auth.uid()``, ``auth.role()`` and RLS apply as on Supabase.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

from realtime_worker.devstack.keys import ROLES

if TYPE_CHECKING:
    PoolConnection: TypeAlias = asyncpg.pool.PoolConnectionProxy[asyncpg.Record]



async def _init(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.execute("set timezone = 'UTC'")


class Database:
    """A pool of connections to the stack's database."""

    def __init__(self, dsn: str, *, max_size: int = 10) -> None:
        self.dsn = dsn
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=self._max_size, init=_init)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database is not open")
        return self._pool

    @asynccontextmanager
    async def as_role(self, claims: dict[str, Any]) -> AsyncIterator[PoolConnection]:
        """A connection in a transaction running as the claims' role."""
        role = claims.get("role")
        if role not in ROLES:
            raise PermissionError("unknown role")
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "select set_config('role', $1, true),"
                " set_config('request.jwt.claims', $2, true),"
                " set_config('request.jwt.claim.sub', $3, true),"
                " set_config('request.jwt.claim.role', $1, true)",
                role, json.dumps(claims), str(claims.get("sub") or ""))
            yield conn

    @asynccontextmanager
    async def admin(self) -> AsyncIterator[PoolConnection]:
        """A connection as the owner (for the stack's own bookkeeping, never for requests)."""
        async with self.pool.acquire() as conn:
            yield conn
