"""public.create_job: one call that locks, validates, debits, inserts and writes the ledger,
called as the app would call it (supabase-js ``rpc('create_job', {p_params})``, here the Python
client) with the user's own JWT."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from postgrest.exceptions import APIError

from realtime_worker_devstack.server import Devstack
from tests.security.support import (
    SIGNUP_CREDITS,
    as_user,
    balance_of,
    claim,
    ledger_total,
    sign_up,
)

pytestmark = pytest.mark.integration

TEXT = {"text_prompt": "a tiger eating a burger", "complexity": "standard", "line_thickness": "medium"}


async def create(stack: Devstack, user: uuid.UUID, params: Any) -> dict[str, Any]:
    async with as_user(stack, user) as client:
        answer = await client.rpc("create_job", {"p_params": params}).execute()
    assert isinstance(answer.data, dict)
    return answer.data


async def refused(stack: Devstack, user: uuid.UUID, params: Any) -> APIError:
    with pytest.raises(APIError) as caught:
        await create(stack, user, params)
    return caught.value


async def asset(conn: asyncpg.Connection, user: uuid.UUID, kind: str, path: str = "x.png") -> uuid.UUID:
    asset_id: uuid.UUID = await conn.fetchval(
        "insert into public.assets (user_id, kind, storage_path) values ($1, $2, $3) returning id",
        user, kind, f"{user}/{path}")
    return asset_id


async def test_a_text_job_is_debited_inserted_and_ledgered_at_once(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    user = await sign_up(conn)
    job = await create(devstack, user, TEXT)
    assert (job["status"], job["user_id"], job["params_json"]) == ("queued", str(user), TEXT)
    assert (job["credits_charged"], job["charged_via"]) == (1, "create_job")
    assert await balance_of(conn, user) == SIGNUP_CREDITS - 1
    event = await conn.fetchrow("select delta, reason from public.credit_events where job_id = $1",
                                uuid.UUID(job["id"]))
    assert event is not None and (event["delta"], event["reason"]) == (-1, "generation_queued")
    assert await ledger_total(conn, user) == await balance_of(conn, user)


async def test_no_credit_is_402_and_changes_nothing(devstack: Devstack, conn: asyncpg.Connection) -> None:
    user = await sign_up(conn)
    for _ in range(SIGNUP_CREDITS):
        await create(devstack, user, TEXT)
    headers = {"apikey": devstack.keys.make("authenticated", sub=str(user))}
    async with httpx.AsyncClient(base_url=devstack.url, headers=headers) as http:
        answer = await http.post("/rest/v1/rpc/create_job", json={"p_params": TEXT})
    assert answer.status_code == 402
    assert (answer.json()["code"], answer.json()["message"]) == ("PT402", "Insufficient credits")
    assert await balance_of(conn, user) == 0
    assert await conn.fetchval("select count(*) from public.jobs where user_id = $1", user) == SIGNUP_CREDITS


async def test_two_calls_for_the_last_credit_make_one_job(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    user = await sign_up(conn, balance=1)
    outcomes = await asyncio.gather(*(create(devstack, user, TEXT) for _ in range(4)),
                                    return_exceptions=True)
    made = [o for o in outcomes if isinstance(o, dict)]
    assert len(made) == 1
    assert all(isinstance(o, APIError) and o.code == "PT402" for o in outcomes if o not in made)
    assert await balance_of(conn, user) == 0


@pytest.mark.parametrize(("params", "message"), [
    ({**TEXT, "text_prompt": "cat"}, "text_prompt must be text of 5 to 500 characters"),
    ({**TEXT, "text_prompt": "c" * 501}, "text_prompt must be text of 5 to 500 characters"),
    ({**TEXT, "text_prompt": 12345}, "text_prompt must be text of 5 to 500 characters"),
    ({**TEXT, "complexity": "extreme"}, "complexity must be one of simple, standard, detailed"),
    ({"text_prompt": "a tiger", "complexity": "simple"}, "line_thickness is required"),
    ({**TEXT, "line_thickness": "bold"}, "line_thickness must be one of thin, medium, thick"),
    ({**TEXT, "max_attempts": 1000}, "p_params of a text job may not hold max_attempts"),
    ({**TEXT, "asset_id": str(uuid.uuid4())}, "p_params of a text job may not hold asset_id"),
    ({}, "p_params needs text_prompt, asset_id or edit_parent_id"),
    ([1, 2], "p_params must be a JSON object"),
    ({**TEXT, "title": "t" * 20_000}, "p_params is too large"),
    ({"asset_id": "not-an-id", "complexity": "simple", "line_thickness": "thin"}, "asset_id must be an id"),
])
async def test_bad_params_are_400_and_cost_nothing(
        devstack: Devstack, conn: asyncpg.Connection, params: Any, message: str) -> None:
    user = await sign_up(conn)
    error = await refused(devstack, user, params)
    assert error.code == "22023" and message in str(error.message)
    assert await balance_of(conn, user) == SIGNUP_CREDITS
    assert await conn.fetchval("select count(*) from public.jobs where user_id = $1", user) == 0


async def test_a_photo_job_needs_an_original_of_the_caller(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    user, other = await sign_up(conn), await sign_up(conn)
    photo = {"complexity": "detailed", "line_thickness": "thick", "custom_prompt": "sunny"}
    for asset_id in (await asset(conn, other, "original"), await asset(conn, user, "edge_map")):
        error = await refused(devstack, user, {**photo, "asset_id": str(asset_id)})
        assert error.code == "PT404" and "no original asset" in str(error.message)
    mine = await asset(conn, user, "original")
    job = await create(devstack, user, {**photo, "asset_id": str(mine)})
    assert job["params_json"]["asset_id"] == str(mine)
    reason = await conn.fetchval("select reason from public.credit_events where job_id = $1",
                                 uuid.UUID(job["id"]))
    assert reason == "generation_queued"


async def succeeded(conn: asyncpg.Connection, user: uuid.UUID) -> uuid.UUID:
    job_id: uuid.UUID = await conn.fetchval(
        "insert into public.jobs (user_id, params_json) values ($1, $2::jsonb) returning id",
        user, '{"text_prompt": "a cat", "complexity": "simple", "line_thickness": "thin"}')
    assert await claim(conn, job_id)
    assert await conn.fetchval("select public.worker_complete_job($1, 'w', '{}'::jsonb)", job_id)
    return job_id


async def test_an_edit_needs_a_succeeded_job_and_a_page_of_the_caller(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    user, other = await sign_up(conn, balance=10), await sign_up(conn)
    parent, page = await succeeded(conn, user), await asset(conn, user, "edge_map")
    edit = {"edit_parent_id": str(parent), "edit_prompt": "add a hat",
            "edit_source_asset_id": str(page), "complexity": "simple", "line_thickness": "thin"}
    queued = await create(devstack, user, TEXT)
    cases = [({"edit_parent_id": queued["id"]}, "22023", "only a succeeded job can be edited"),
             ({"edit_parent_id": str(await succeeded(conn, other))}, "PT404", "to edit"),
             ({"edit_source_asset_id": str(await asset(conn, other, "edge_map"))}, "PT404", "no edge_map"),
             ({"edit_prompt": "no"}, "22023", "edit_prompt must be text of 3 to 200"),
             ({"edit_prompt": "add a knife"}, "22023", "inappropriate")]
    for change, code, message in cases:
        error = await refused(devstack, user, {**edit, **change})
        assert error.code == code and message in str(error.message), change
    for _ in range(2):
        job = await create(devstack, user, edit)
        reason = await conn.fetchval("select reason from public.credit_events where job_id = $1",
                                     uuid.UUID(job["id"]))
        assert reason == "edit_queued"
    error = await refused(devstack, user, edit)
    assert error.code == "PT403" and "at most twice" in str(error.message)
    assert await balance_of(conn, user) == 10 - 3


async def test_only_signed_in_users_may_call_it(devstack: Devstack) -> None:
    async with httpx.AsyncClient(base_url=devstack.url) as http:
        anon = await http.post("/rest/v1/rpc/create_job", json={"p_params": TEXT},
                               headers={"apikey": devstack.anon_key})
        service = await http.post("/rest/v1/rpc/create_job", json={"p_params": TEXT},
                                  headers={"apikey": devstack.service_key})
    assert (anon.status_code, service.status_code) == (401, 403)
    assert anon.json()["code"] == service.json()["code"] == "42501"
