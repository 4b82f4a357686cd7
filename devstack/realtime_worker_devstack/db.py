"""The devstack's database access: every request runs under the role of its key.

Requests use their own pool whose connections keep a key's role for the session: before a
request, its connection is switched to the request's role and claims (``role``,
``request.jwt.claims`` and the ``.sub``/``.role`` shortcuts, the settings PostgREST publishes)
unless that connection already runs as exactly those claims. Grants, ``auth.uid()``,
``auth.role()`` and RLS then apply as on Supabase. A request of one statement (an RPC, a read)
is then one round trip (:meth:`Database.fetchrow_as`); several statements run in a transaction
(:meth:`Database.as_role`). The stack's own bookkeeping uses a second pool as the owner.

Unlike PostgREST's ``set local``, the settings outlive the request on that connection: a
function that changed them at session level (``set_config(…, false)``) would hand its values to
the next request of the same key. Nothing in the Supabase schema or the worker's contract does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

from realtime_worker_devstack.keys import ROLES

if TYPE_CHECKING:
    PoolConnection: TypeAlias = asyncpg.pool.PoolConnectionProxy[asyncpg.Record]

_SWITCH = ("select set_config('role', $1, false), set_config('request.jwt.claims', $2, false),"
           " set_config('request.jwt.claim.sub', $3, false),"
           " set_config('request.jwt.claim.role', $1, false)")


async def _init(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.execute("set timezone = 'UTC'")


class RequestConnection(asyncpg.Connection):
    """A connection of the request pool; remembers whose claims its session runs as."""

    session_claims: str | None = None

    def remember_claims(self, claims: str) -> None:
        self.session_claims = claims


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """On release asyncpg has rolled back any open transaction; the session's role stays."""


class Database:
    """The stack's database: a request pool (per-key roles) and an owner pool."""

    def __init__(self, dsn: str, *, max_size: int = 10) -> None:
        self.dsn = dsn
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._requests: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4, init=_init)
        self._requests = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=self._max_size, init=_init,
            connection_class=RequestConnection, reset=_keep_session)

    async def close(self) -> None:
        for pool in (self._requests, self._pool):
            if pool is not None:
                await pool.close()
        self._pool = self._requests = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database is not open")
        return self._pool

    @asynccontextmanager
    async def _connection(self, claims: dict[str, Any]) -> AsyncIterator[PoolConnection]:
        """A request connection whose session runs as ``claims``."""
        role = claims.get("role")
        if role not in ROLES:
            raise PermissionError("unknown role")
        if self._requests is None:
            raise RuntimeError("database is not open")
        key = json.dumps(claims, sort_keys=True)
        async with self._requests.acquire() as conn:
            session: Any = conn  # the pool's proxy forwards to its RequestConnection
            if session.session_claims != key:
                session.remember_claims("")  # unknown until the switch has succeeded
                await conn.execute(_SWITCH, role, key, str(claims.get("sub") or ""))
                session.remember_claims(key)
            yield conn

    async def fetchrow_as(self, claims: dict[str, Any], sql: str, *args: Any) -> asyncpg.Record | None:
        """One statement as the claims' role: one round trip when the connection already is."""
        async with self._connection(claims) as conn:
            return await conn.fetchrow(sql, *args)

    @asynccontextmanager
    async def as_role(self, claims: dict[str, Any]) -> AsyncIterator[PoolConnection]:
        """A connection in a transaction running as the claims' role."""
        async with self._connection(claims) as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def admin(self) -> AsyncIterator[PoolConnection]:
        """A connection as the owner (for the stack's own bookkeeping, never for requests)."""
        async with self.pool.acquire() as conn:
            yield conn
