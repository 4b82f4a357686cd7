"""The devstack's PostgREST conventions, through the official supabase client over real sockets."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from postgrest.exceptions import APIError
from supabase import AsyncClient

from realtime_worker_devstack.server import Devstack
from tests.devstack_fixtures import rows
from tests.helpers import balance, insert_job, job, make_user, refunds

pytestmark = pytest.mark.integration

W1, W2 = "worker-1", "worker-2"
RESULT = {
    "model": "gemini-3.1-flash-lite-image",
    "cost_cents": 4,
    "assets": [{"kind": "pdf", "storage_path": "u/j/coloring_page.pdf", "bytes": 20, "width": None,
                "height": None, "hash": "def"}],
}


async def claim(client: AsyncClient, job_id: uuid.UUID, worker: str = W1) -> list[dict[str, Any]]:
    response = await client.rpc("worker_claim_job", {
        "p_job_id": str(job_id), "p_worker": worker, "p_lease_seconds": 60}).execute()
    return rows(response.data)


async def test_claim_job_returns_the_claimed_rows(
        supabase_service: AsyncClient, conn: asyncpg.Connection) -> None:
    job_id = await insert_job(conn, await make_user(conn))
    rows = await claim(supabase_service, job_id)
    assert isinstance(rows, list) and len(rows) == 1
    assert rows[0]["id"] == str(job_id)
    assert rows[0]["status"] == "running" and rows[0]["locked_by"] == W1 and rows[0]["attempts"] == 1
    assert rows[0]["params_json"] == {"text_prompt": "a tiger eating a burger"}
    assert await claim(supabase_service, job_id, W2) == []


async def test_claim_jobs_limit_and_heartbeat_owner_only(
        supabase_service: AsyncClient, conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    ids = {await insert_job(conn, user) for _ in range(3)}
    response = await supabase_service.rpc("worker_claim_jobs", {
        "p_worker": W1, "p_limit": 2, "p_lease_seconds": 30}).execute()
    claimed = rows(response.data)
    assert len(claimed) == 2 and {r["id"] for r in claimed} <= {str(i) for i in ids}
    owned = claimed[0]["id"]
    beat = await supabase_service.rpc("worker_heartbeat", {
        "p_job_id": owned, "p_worker": W1, "p_lease_seconds": 60}).execute()
    assert beat.data is True
    stolen = await supabase_service.rpc("worker_heartbeat", {
        "p_job_id": owned, "p_worker": W2, "p_lease_seconds": 60}).execute()
    assert stolen.data is False


async def test_complete_job_takes_a_json_result(
        supabase_service: AsyncClient, conn: asyncpg.Connection) -> None:
    job_id = await insert_job(conn, await make_user(conn))
    await claim(supabase_service, job_id)
    done = await supabase_service.rpc("worker_complete_job", {
        "p_job_id": str(job_id), "p_worker": W1, "p_result": RESULT}).execute()
    assert done.data is True
    row = await job(conn, job_id)
    assert row["status"] == "succeeded" and row["cost_cents"] == 4 and row["model"] == RESULT["model"]
    assets = "select count(*) from assets where storage_path = 'u/j/coloring_page.pdf'"
    assert await conn.fetchval(assets) == 1


async def test_fail_job_returns_text_or_null(supabase_service: AsyncClient, conn: asyncpg.Connection) -> None:
    user = await make_user(conn, balance=5)
    job_id = await insert_job(conn, user, max_attempts=1)
    await claim(supabase_service, job_id)
    args = {"p_job_id": str(job_id), "p_error": "It broke.", "p_error_code": "boom",
            "p_retry_in_seconds": None}
    not_owner = await supabase_service.rpc("worker_fail_job", {**args, "p_worker": W2}).execute()
    assert not_owner.data is None
    failed = await supabase_service.rpc("worker_fail_job", {**args, "p_worker": W1}).execute()
    assert failed.data == "failed"
    assert await balance(conn, user) == 5 and await refunds(conn, job_id) == 1


async def test_release_and_reap(supabase_service: AsyncClient, conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    released, expired = await insert_job(conn, user), await insert_job(conn, user)
    await claim(supabase_service, released)
    await claim(supabase_service, expired)
    back = await supabase_service.rpc("worker_release_job", {
        "p_job_id": str(released), "p_worker": W1}).execute()
    assert back.data is True
    assert (await job(conn, released))["status"] == "queued"
    await conn.execute("update jobs set locked_until = now() - interval '1 second' where id = $1", expired)
    reaped = await supabase_service.rpc("worker_reap_expired", {"p_limit": 10}).execute()
    assert reaped.data == 1
    again = await supabase_service.rpc("worker_reap_expired", {"p_limit": 10}).execute()
    assert again.data == 0


async def test_table_select_filters_order_limit(
        supabase_service: AsyncClient, conn: asyncpg.Connection) -> None:
    user, other = await make_user(conn), await make_user(conn)
    ids = [await insert_job(conn, user) for _ in range(4)]
    for i, job_id in enumerate(ids):
        await conn.execute("update jobs set created_at = now() - make_interval(mins => $2) where id = $1",
                           job_id, 10 - i)
    await conn.execute("update jobs set status = 'failed' where id = $1", ids[0])
    await insert_job(conn, other)
    response = await (supabase_service.table("jobs").select("id,status")
                      .eq("user_id", str(user)).in_("status", ["queued", "running"])
                      .order("created_at", desc=True).limit(2).execute())
    assert response.data == [{"id": str(ids[3]), "status": "queued"}, {"id": str(ids[2]), "status": "queued"}]
    nulls = await (supabase_service.table("jobs").select("id").eq("user_id", str(user))
                   .is_("locked_by", "null").neq("status", "failed").execute())
    assert {r["id"] for r in rows(nulls.data)} == {str(i) for i in ids[1:]}
    paged = await (supabase_service.table("jobs").select("id").eq("user_id", str(user))
                   .order("created_at").range(1, 2).execute())
    assert [r["id"] for r in rows(paged.data)] == [str(ids[1]), str(ids[2])]


async def test_insert_and_update_return_representation(
        supabase_service: AsyncClient, conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    inserted = await supabase_service.table("jobs").insert(
        [{"user_id": str(user), "params_json": {"text_prompt": "a cat"}},
         {"user_id": str(user), "params_json": {"text_prompt": "a dog"}}]).execute()
    created = rows(inserted.data)
    assert len(created) == 2 and all(r["status"] == "queued" for r in created)
    first = created[0]["id"]
    updated = await (supabase_service.table("jobs").update({"error": "x", "max_attempts": 5})
                     .eq("id", first).execute())
    assert [(r["id"], r["error"], r["max_attempts"]) for r in rows(updated.data)] == [(first, "x", 5)]
    assert (await job(conn, uuid.UUID(first)))["error"] == "x"


async def test_single_found_and_not_found(supabase_service: AsyncClient, conn: asyncpg.Connection) -> None:
    job_id = await insert_job(conn, await make_user(conn))
    found = await supabase_service.table("jobs").select("id").eq("id", str(job_id)).single().execute()
    assert found.data == {"id": str(job_id)}
    with pytest.raises(APIError) as caught:
        await supabase_service.table("jobs").select("*").eq("id", str(uuid.uuid4())).single().execute()
    assert caught.value.code == "PGRST116"
    assert caught.value.details == "The result contains 0 rows"


async def test_unknown_function_and_table(supabase_service: AsyncClient) -> None:
    with pytest.raises(APIError) as caught:
        await supabase_service.rpc("worker_does_not_exist", {"p_x": 1}).execute()
    assert caught.value.code == "PGRST202"
    with pytest.raises(APIError) as missing_arg:
        await supabase_service.rpc("worker_reap_expired", {}).execute()
    assert missing_arg.value.code == "PGRST202"
    with pytest.raises(APIError) as table:
        await supabase_service.table("no_such_table").select("*").execute()
    assert table.value.code == "PGRST205"


async def test_database_errors_keep_postgrest_status(devstack: Devstack, conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    job_id = await insert_job(conn, user)
    headers = {"apikey": devstack.service_key, "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=f"{devstack.url}/rest/v1", headers=headers) as http:
        duplicate = await http.post("/jobs", json={"id": str(job_id), "user_id": str(user),
                                                   "params_json": {}})
        bad_uuid = await http.get("/jobs", params={"id": "eq.not-a-uuid"})
        bad_column = await http.get("/jobs", params={"nope": "eq.1"})
        bad_filter = await http.get("/jobs", params={"id": "between.1"})
        minimal = await http.patch("/jobs", params={"id": f"eq.{job_id}"}, json={"error": "y"})
    assert (duplicate.status_code, duplicate.json()["code"]) == (409, "23505")
    assert set(duplicate.json()) == {"code", "details", "hint", "message"}
    assert (bad_uuid.status_code, bad_uuid.json()["code"]) == (400, "22P02")
    assert (bad_column.status_code, bad_column.json()["code"]) == (400, "42703")
    assert (bad_filter.status_code, bad_filter.json()["code"]) == (400, "PGRST100")
    assert (minimal.status_code, minimal.content) == (204, b"")


async def test_custom_sqlstate_pt_answers_its_status(devstack: Devstack, conn: asyncpg.Connection) -> None:
    """PostgREST's convention: ``raise ... using errcode = 'PT402'`` answers HTTP 402."""
    await conn.execute("""create function public.raise_as(code text) returns void language plpgsql as $$
                          begin raise exception using errcode = code, message = 'as asked'; end $$""")
    headers = {"apikey": devstack.service_key}
    async with httpx.AsyncClient(base_url=f"{devstack.url}/rest/v1", headers=headers) as http:
        answers = [await http.post("/rpc/raise_as", json={"code": code})
                   for code in ("PT402", "PT403", "PT418", "P0001")]
    assert [(a.status_code, a.json()["code"]) for a in answers] == [
        (402, "PT402"), (403, "PT403"), (418, "PT418"), (400, "P0001")]
    assert {a.json()["message"] for a in answers} == {"as asked"}


async def test_rest_fault_answers_the_configured_status(
        devstack: Devstack, supabase_service: AsyncClient) -> None:
    devstack.faults.update({"rest_error_fraction": 1.0, "rest_error_status": 500})
    with pytest.raises(APIError) as caught:
        await supabase_service.rpc("worker_reap_expired", {"p_limit": 1}).execute()
    assert caught.value.message == "Injected fault"
    devstack.faults.reset()
    assert (await supabase_service.rpc("worker_reap_expired", {"p_limit": 1}).execute()).data == 0
