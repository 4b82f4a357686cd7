"""A user as the app creates one (devstack/realtime_worker_devstack/users.py) on the app's faithful schema."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from realtime_worker_devstack import users


async def ledger(conn: asyncpg.Connection, user: uuid.UUID) -> list[tuple[int, str]]:
    rows = await conn.fetch("select delta, reason from public.credit_events where user_id = $1"
                            " order by created_at, delta desc", user)
    return [(r["delta"], r["reason"]) for r in rows]


async def ledger_explains_balance(conn: asyncpg.Connection, user: uuid.UUID) -> bool:
    total = await conn.fetchval("select sum(delta) from public.credit_events where user_id = $1", user)
    return bool(total == await users.balance(conn, user))


async def test_sign_up_is_the_apps_trigger(conn: asyncpg.Connection) -> None:
    user = await users.sign_up(conn, email="new@example.test")
    profile = await conn.fetchrow("select email, last_login_at from public.users where id = $1", user)
    assert profile is not None and profile["email"] == "new@example.test"
    assert profile["last_login_at"] is not None
    assert await users.balance(conn, user) == users.SIGNUP_CREDITS == 3
    assert await ledger(conn, user) == [(3, "signup_bonus")]


@pytest.mark.parametrize("wanted", [0, 2, 3, 10])
async def test_any_balance_is_explained_by_the_ledger(conn: asyncpg.Connection, wanted: int) -> None:
    user = await users.create(conn, wanted)
    assert await users.balance(conn, user) == wanted
    assert await ledger_explains_balance(conn, user)
    found = await ledger(conn, user)
    assert found[0] == (3, "signup_bonus")
    if wanted > 3:
        assert found[1:] == [(wanted - 3, users.purchase_reason(wanted - 3))]
        assert await conn.fetchval("select stripe_event_id like 'cs_test_%' from public.credit_events"
                                   " where user_id = $1 and delta = $2", user, wanted - 3)
    else:
        assert found[1:] == [(-1, users.SPENT_REASON)] * (3 - wanted)


async def test_a_fixed_user_signs_up_once_and_is_topped_up(conn: asyncpg.Connection) -> None:
    fixed = uuid.UUID("00000000-0000-4000-8000-0000000000f1")
    for _ in range(2):
        await users.sign_up(conn, fixed, "fixed@example.test")
        await users.top_up(conn, fixed, 50)
    assert await users.balance(conn, fixed) == 50
    assert [reason for _, reason in await ledger(conn, fixed)] == [
        "signup_bonus", users.purchase_reason(47)]
    assert await ledger_explains_balance(conn, fixed)


async def test_a_negative_balance_is_refused(conn: asyncpg.Connection) -> None:
    with pytest.raises(ValueError, match="negative"):
        await users.create(conn, -1)
