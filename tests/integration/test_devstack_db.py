"""The devstack's request connections keep a key's role for their session: nothing may leak.

A pool of one connection makes every request reuse the same session, so each one must see
exactly its own role and claims, whatever ran on that connection before: another key, a
failed statement, a rolled-back transaction. The owner pool stays the owner.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from realtime_worker_devstack.db import Database
from tests import conftest

pytestmark = pytest.mark.integration

WHO = ("select current_user::text, auth.role(), auth.uid()::text,"
       " current_setting('request.jwt.claims', true)")


def claims(role: str, sub: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"role": role, "iss": "supabase"}
    if sub is not None:
        found["sub"] = sub
    return found


@pytest.fixture
async def database(db: conftest.Database) -> AsyncIterator[Database]:
    database = Database(db.dsn, max_size=1)
    await database.open()
    try:
        yield database
    finally:
        await database.close()


async def who(database: Database, who_claims: dict[str, Any]) -> tuple[str, str, str | None, dict[str, Any]]:
    row = await database.fetchrow_as(who_claims, WHO)
    assert row is not None
    return row[0], row[1], row[2], json.loads(row[3])


async def test_each_request_sees_only_its_own_key(database: Database) -> None:
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    sequence = [claims("service_role"), claims("authenticated", alice), claims("anon"),
                claims("authenticated", bob), claims("authenticated", alice), claims("service_role")]
    for expected in sequence * 2:
        user, role, uid, published = await who(database, expected)
        assert (user, role, uid, published) == (expected["role"], expected["role"],
                                                expected.get("sub"), expected)


async def test_failed_statement_and_rolled_back_transaction_change_nothing(database: Database) -> None:
    alice, bob = claims("authenticated", str(uuid.uuid4())), claims("authenticated", str(uuid.uuid4()))
    await who(database, alice)
    with pytest.raises(asyncpg.PostgresError):
        await database.fetchrow_as(bob, "select 1 / 0")
    assert (await who(database, bob))[2] == bob["sub"]
    with pytest.raises(RuntimeError):
        async with database.as_role(alice) as conn:
            assert await conn.fetchval("select auth.uid()::text") == alice["sub"]
            raise RuntimeError("the request failed half-way")
    assert (await who(database, alice))[2] == alice["sub"]
    assert (await who(database, bob))[2] == bob["sub"]


async def test_anon_grants_still_apply_after_the_service_role_used_the_session(database: Database) -> None:
    assert await database.fetchrow_as(claims("service_role"), "select count(*) from public.jobs") is not None
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await database.fetchrow_as(claims("anon"), "select * from public.worker_reap_expired(1)")


async def test_unknown_role_is_refused_before_any_sql(database: Database) -> None:
    with pytest.raises(PermissionError):
        await database.fetchrow_as({"role": "postgres"}, "select 1")


async def test_owner_pool_is_never_switched(database: Database) -> None:
    await who(database, claims("anon"))
    async with database.admin() as conn:
        user = await conn.fetchval("select current_user::text")
        setting = await conn.fetchval("select current_setting('request.jwt.claims', true)")
    assert user not in ("anon", "authenticated", "service_role")
    assert setting in (None, "")
