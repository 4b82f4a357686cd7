"""The app's three job routes, step by step as their route.ts files make the calls, in both modes:
``today`` (no hardening: debit and insert in separate requests) and ``create_job`` (hardened:
each route makes the one call of docs/security.md). The real worker then draws every page."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from supabase import AsyncClient

from realtime_worker import migrate
from realtime_worker_devstack.server import Devstack
from tests.devstack_fixtures import rows
from tests.integration.test_pipeline_devstack import PHOTO, run_worker_once
from tests.security.support import SIGNUP_CREDITS, as_user, balance_of, ledger_total, sign_up

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Inheritance class Aiohttp:DeprecationWarning"),
]

STYLE = {"complexity": "standard", "line_thickness": "medium"}


async def create_job(client: AsyncClient, params: dict[str, Any]) -> str:
    answer = await client.rpc("create_job", {"p_params": params}).execute()
    assert isinstance(answer.data, dict)
    return str(answer.data["id"])


async def text_today(client: AsyncClient, user: uuid.UUID, params: dict[str, Any]) -> str:
    """apps/web/app/api/jobs/text/route.ts: check, increment_user_credits(-1), insert."""
    credits = await client.table("credits").select("balance").eq("user_id", str(user)).single().execute()
    assert isinstance(credits.data, dict) and credits.data["balance"] >= 1
    await client.rpc("increment_user_credits", {"user_id": str(user), "amount": -1}).execute()
    job = await client.table("jobs").insert({
        "user_id": str(user), "status": "queued", "params_json": params, "cost_cents": 100,
        "model": "gemini-2.5-flash-image-preview"}).execute()
    return str(rows(job.data)[0]["id"])


async def insert_then_debit(client: AsyncClient, user: uuid.UUID, params: dict[str, Any], reason: str) -> str:
    """apps/web/app/api/jobs/route.ts and jobs/[id]/edit/route.ts: insert, UPDATE credits, ledger row."""
    credits = await client.table("credits").select("balance").eq("user_id", str(user)).single().execute()
    assert isinstance(credits.data, dict) and credits.data["balance"] >= 1
    job = await client.table("jobs").insert({
        "id": str(uuid.uuid4()), "user_id": str(user), "status": "queued", "params_json": params}).execute()
    await client.table("credits").update({"balance": credits.data["balance"] - 1}).eq(
        "user_id", str(user)).execute()
    await client.table("credit_events").insert(
        {"user_id": str(user), "delta": -1, "reason": reason}).execute()
    return str(rows(job.data)[0]["id"])


async def upload_photo(client: AsyncClient, user: uuid.UUID) -> str:
    """apps/web/app/api/upload/route.ts: the object under the user's folder, a bucket-relative row."""
    name = f"{user}/{uuid.uuid4()}.jpg"
    await client.storage.from_("originals").upload(name, PHOTO, {"content-type": "image/jpeg"})
    asset = await client.table("assets").insert({
        "user_id": str(user), "kind": "original", "storage_path": name, "bytes": len(PHOTO)}).execute()
    return str(rows(asset.data)[0]["id"])


async def edit_params(client: AsyncClient, user: uuid.UUID, parent: str) -> dict[str, Any]:
    """What the edit route looks up before it creates the edit: the parent's page."""
    page = await client.table("assets").select("id").eq("user_id", str(user)).eq("kind", "edge_map").eq(
        "storage_path", f"{user}/{parent}/edge.png").execute()
    [found] = rows(page.data)
    return {"edit_parent_id": parent, "edit_prompt": "add a party hat",
            "edit_source_asset_id": found["id"], **STYLE}


@pytest.fixture(params=["today", "create_job"])
async def mode(request: pytest.FixtureRequest, devstack: Devstack,
               conn: asyncpg.Connection) -> AsyncIterator[str]:
    if request.param == "create_job":
        await migrate.apply(conn, harden=True)
    yield request.param


async def test_the_three_routes_make_pages_in_both_modes(
        mode: str, devstack: Devstack, conn: asyncpg.Connection) -> None:
    user = await sign_up(conn)
    text = {"text_prompt": "a tiger eating a burger", **STYLE}
    async with as_user(devstack, user) as client:
        photo = {"asset_id": await upload_photo(client, user), **STYLE}
        if mode == "today":
            made = [await text_today(client, user, text),
                    await insert_then_debit(client, user, photo, "generation_queued")]
        else:
            made = [await create_job(client, text), await create_job(client, photo)]
        await run_worker_once(devstack)
        edit = await edit_params(client, user, made[0])
        made.append(await (insert_then_debit(client, user, edit, "edit_queued") if mode == "today"
                           else create_job(client, edit)))
        await run_worker_once(devstack)
    found = await conn.fetch("select id, status::text, charged_via from public.jobs where user_id = $1", user)
    assert {str(r["id"]): r["status"] for r in found} == dict.fromkeys(made, "succeeded")
    assert {r["charged_via"] for r in found} == {"direct" if mode == "today" else "create_job"}
    assert await balance_of(conn, user) == SIGNUP_CREDITS - 3
    # The text route debits without a ledger row today; create_job writes one for every charge.
    assert await ledger_total(conn, user) - await balance_of(conn, user) == (1 if mode == "today" else 0)
