"""Keys, roles and RLS on the devstack: every request runs as its key, as on Supabase."""

from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from postgrest.exceptions import APIError
from storage3.exceptions import StorageApiError
from supabase import AsyncClient

from realtime_worker import migrate
from realtime_worker.errors import ConfigError
from realtime_worker_devstack import postgres
from realtime_worker_devstack.keys import Keys
from realtime_worker_devstack.server import Devstack, running
from realtime_worker_devstack.stack import local_database
from tests.conftest import Database
from tests.devstack_fixtures import file_options, rows, supabase_client
from tests.helpers import balance, insert_job, job, make_user, refunds

pytestmark = pytest.mark.integration

CLAIM_ARGS = {"p_worker": "w", "p_limit": 1, "p_lease_seconds": 30}


async def test_no_key_is_refused(devstack: Devstack) -> None:
    async with httpx.AsyncClient(base_url=devstack.url) as http:
        rest = await http.post("/rest/v1/rpc/worker_reap_expired", json={"p_limit": 1})
        storage = await http.get("/storage/v1/object/originals/u/x.png")
        bearer = {"Authorization": f"Bearer {devstack.service_key}"}
        bearer_only = await http.get("/rest/v1/jobs", headers=bearer)
    for response in (rest, storage, bearer_only):
        assert response.status_code == 401
        assert response.json() == {"message": "No API key found in request",
                                   "hint": "No `apikey` request header or url param was found."}


async def test_badly_signed_keys_are_refused(devstack: Devstack, tmp_path: Path) -> None:
    forged = Keys("not-the-secret-of-this-stack-but-long-enough-for-hs256").service_role
    async with supabase_client(devstack.url, forged) as client:
        with pytest.raises(APIError) as caught:
            await client.rpc("worker_reap_expired", {"p_limit": 1}).execute()
        assert caught.value.message == "Invalid API key"
        with pytest.raises(StorageApiError) as storage:
            await client.storage.from_("originals").download("u/x.png")
        assert storage.value.status == 401
    headers = {"apikey": devstack.anon_key, "Authorization": f"Bearer {forged}"}
    async with httpx.AsyncClient(base_url=devstack.url, headers=headers) as http:
        rest = await http.get("/rest/v1/jobs")
        storage_bearer = await http.get("/storage/v1/object/originals/u/x.png")
        expired = await http.get("/rest/v1/jobs", headers={
            "Authorization": f"Bearer {devstack.keys.make('service_role', ttl=-10)}"})
    assert (rest.status_code, rest.json()["code"]) == (401, "PGRST301")
    assert storage_bearer.json()["statusCode"] == "403" and storage_bearer.json()["error"] == "Unauthorized"
    assert (expired.status_code, expired.json()["message"]) == (401, "JWT expired")


async def test_anon_cannot_run_worker_functions(supabase_anon: AsyncClient, devstack: Devstack) -> None:
    with pytest.raises(APIError) as caught:
        await supabase_anon.rpc("worker_claim_jobs", CLAIM_ARGS).execute()
    assert caught.value.code == "42501" and "permission denied" in str(caught.value.message)
    headers = {"apikey": devstack.keys.make("authenticated", sub="00000000-0000-4000-8000-000000000001")}
    async with httpx.AsyncClient(base_url=devstack.url) as http:
        anon = await http.post("/rest/v1/rpc/worker_claim_jobs", json=CLAIM_ARGS,
                               headers={"apikey": devstack.anon_key})
        signed_in = await http.post("/rest/v1/rpc/worker_claim_jobs", json=CLAIM_ARGS, headers=headers)
    assert (anon.status_code, signed_in.status_code) == (401, 403)


async def test_rls_a_user_reads_only_their_jobs(devstack: Devstack, conn: asyncpg.Connection) -> None:
    alice, bob = await make_user(conn), await make_user(conn)
    alice_job, bob_job = await insert_job(conn, alice), await insert_job(conn, bob)
    async with supabase_client(devstack.url, devstack.keys.make("authenticated", sub=str(alice))) as client:
        mine = await client.table("jobs").select("id").execute()
        assert [r["id"] for r in rows(mine.data)] == [str(alice_job)]
        theirs = await client.table("jobs").select("id").eq("id", str(bob_job)).execute()
        assert theirs.data == []
        created = await client.table("jobs").insert({"user_id": str(alice), "params_json": {}}).execute()
        assert rows(created.data)[0]["user_id"] == str(alice)
        with pytest.raises(APIError) as forged:
            await client.table("jobs").insert({"user_id": str(bob), "params_json": {}}).execute()
        assert forged.value.code == "42501"
    async with supabase_client(devstack.url, devstack.anon_key) as anon:
        assert (await anon.table("jobs").select("id").execute()).data == []


# --- the worker's columns of public.jobs belong to the worker, not to the API roles -------------

# What a signed-in user could send to mint credits: a "running" job whose lease has long expired,
# attempts used up, and a refund of its own choosing once the sweep reaps it.
FORGED: dict[str, Any] = {
    "params_json": {}, "status": "queued", "locked_by": "x", "locked_until": "2000-01-01T00:00:00Z",
    "heartbeat_at": "2000-01-01T00:00:00Z", "attempts": 3, "max_attempts": 3,
    "credits_charged": 100000, "error_code": "forged", "refunded_at": "2000-01-01T00:00:00Z",
    "run_after": "2000-01-01T00:00:00Z",
}
WORKER_DEFAULTS: dict[str, Any] = {
    "attempts": 0, "max_attempts": 3, "locked_by": None, "locked_until": None,
    "heartbeat_at": None, "error_code": None, "credits_charged": 1, "refunded_at": None,
}
RESULT = {"model": "gemini-test", "cost_cents": 4, "assets": [
    {"kind": "pdf", "storage_path": "u/j/coloring_page.pdf", "bytes": 20, "width": None,
     "height": None, "hash": "def"}]}


def signed_in(devstack: Devstack, user: uuid.UUID) -> AbstractAsyncContextManager[AsyncClient]:
    return supabase_client(devstack.url, devstack.keys.make("authenticated", sub=str(user)))


async def insert_as(stack: Devstack, user: uuid.UUID, values: dict[str, Any]) -> uuid.UUID:
    """A job the signed-in ``user`` inserts through PostgREST; its id."""
    async with signed_in(stack, user) as client:
        created = await client.table("jobs").insert({"user_id": str(user), **values}).execute()
    return uuid.UUID(rows(created.data)[0]["id"])


def worker_columns(row: asyncpg.Record) -> dict[str, Any]:
    return {name: row[name] for name in WORKER_DEFAULTS}


async def credit_events(conn: asyncpg.Connection, user: uuid.UUID) -> int:
    """The user's ledger rows about jobs (refunds); sign-up and purchase rows have no job."""
    count: int = await conn.fetchval(
        "select count(*) from public.credit_events where user_id = $1 and job_id is not null", user)
    return count


async def test_a_user_cannot_forge_worker_columns_to_mint_credits(
        devstack: Devstack, supabase_service: AsyncClient, conn: asyncpg.Connection) -> None:
    user = await make_user(conn, balance=10)
    job_id = await insert_as(devstack, user, FORGED)

    reaped = await supabase_service.rpc("worker_reap_expired", {"p_limit": 100}).execute()
    assert await balance(conn, user) == 10
    assert await credit_events(conn, user) == 0
    assert reaped.data == 0  # no lease, so nothing to reap and nothing to refund
    stored = await job(conn, job_id)
    assert worker_columns(stored) == WORKER_DEFAULTS
    assert stored["run_after"] == stored["created_at"]  # now(), not the forged past
    assert stored["status"] == "queued"  # any other status is refused (tests/security/test_attacks.py)


async def test_a_user_cannot_buy_unbounded_retries_or_a_bigger_refund(
        devstack: Devstack, supabase_service: AsyncClient, conn: asyncpg.Connection) -> None:
    user = await make_user(conn, balance=10)
    forged = {**FORGED, "status": "queued", "max_attempts": 1000, "attempts": -5}
    job_id = await insert_as(devstack, user, forged)
    assert worker_columns(await job(conn, job_id)) == WORKER_DEFAULTS

    for attempt in (1, 2, 3):
        claimed = await supabase_service.rpc("worker_claim_job", {
            "p_job_id": str(job_id), "p_worker": "w", "p_lease_seconds": 60}).execute()
        assert [r["id"] for r in rows(claimed.data)] == [str(job_id)]
        if attempt < 3:
            failed = await supabase_service.rpc("worker_fail_job", {
                "p_job_id": str(job_id), "p_worker": "w", "p_error": "e", "p_error_code": "c",
                "p_retry_in_seconds": 0}).execute()
            assert failed.data == "queued"
    await conn.execute("update public.jobs set locked_until = now() - interval '1 s' where id = $1",
                       job_id)
    reaped = await supabase_service.rpc("worker_reap_expired", {"p_limit": 100}).execute()
    assert reaped.data == 1  # the third attempt was the last, as for any job
    row = await job(conn, job_id)
    assert (row["status"], row["attempts"], row["credits_charged"]) == ("failed", 3, 1)
    assert row["error_code"] == "lease_expired" and row["refunded_at"] is not None
    # The refund is the credit the app charges for a job, never an amount the user chose.
    assert await balance(conn, user) == 11
    assert await refunds(conn, job_id) == 1


async def test_a_users_own_job_is_claimed_and_completed_normally(
        devstack: Devstack, supabase_service: AsyncClient, conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    job_id = await insert_as(devstack, user, {"params_json": {"text_prompt": "a cat"}})
    assert worker_columns(await job(conn, job_id)) == WORKER_DEFAULTS

    claimed = await supabase_service.rpc("worker_claim_jobs", CLAIM_ARGS).execute()
    assert [r["id"] for r in rows(claimed.data)] == [str(job_id)]
    beat = await supabase_service.rpc("worker_heartbeat", {
        "p_job_id": str(job_id), "p_worker": "w", "p_lease_seconds": 60}).execute()
    assert beat.data is True
    running = await job(conn, job_id)
    assert (running["status"], running["attempts"], running["locked_by"]) == ("running", 1, "w")
    assert running["locked_until"] is not None and running["heartbeat_at"] is not None
    done = await supabase_service.rpc("worker_complete_job", {
        "p_job_id": str(job_id), "p_worker": "w", "p_result": RESULT}).execute()
    assert done.data is True
    finished = await job(conn, job_id)
    assert (finished["status"], finished["model"], finished["cost_cents"]) == ("succeeded", "gemini-test", 4)
    assert await conn.fetchval("select count(*) from public.assets where user_id = $1", user) == 1


async def test_a_user_update_cannot_change_worker_columns(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    # The app grants no UPDATE policy today; the guard must hold if it ever does.
    await conn.execute("""create policy "test: users update own jobs" on public.jobs for update
                          to authenticated using (user_id = auth.uid())""")
    user = await make_user(conn)
    job_id = await insert_job(conn, user)
    before = await job(conn, job_id)
    async with signed_in(devstack, user) as client:
        # status and params_json are refused outright (tests/security/test_attacks.py)
        changes = {k: v for k, v in FORGED.items() if k not in ("params_json", "status")}
        updated = await client.table("jobs").update(
            {**changes, "error": "edited"}).eq("id", str(job_id)).execute()
    assert len(rows(updated.data)) == 1
    after = await job(conn, job_id)
    assert after["error"] == "edited"  # the app's other columns are untouched by the guard
    assert worker_columns(after) == worker_columns(before)
    assert after["run_after"] == before["run_after"]


async def test_service_role_sets_worker_columns(
        supabase_service: AsyncClient, conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    created = await supabase_service.table("jobs").insert({
        "user_id": str(user), "params_json": {"text_prompt": "a cat"}, "credits_charged": 0,
        "max_attempts": 5, "run_after": "2000-01-01T00:00:00Z"}).execute()
    job_id = uuid.UUID(rows(created.data)[0]["id"])
    row = await job(conn, job_id)
    assert (row["credits_charged"], row["max_attempts"], row["run_after"].year) == (0, 5, 2000)
    await supabase_service.table("jobs").update({"credits_charged": 2}).eq("id", str(job_id)).execute()
    assert (await job(conn, job_id))["credits_charged"] == 2


async def test_devstack_adds_the_guard_to_a_database_migrated_before_it(
        empty_db: Database, tmp_path: Path) -> None:
    conn = await asyncpg.connect(empty_db.dsn)
    try:
        await postgres.install_schema(conn)
        await conn.execute("""
            drop trigger jobs_guard_worker_columns on public.jobs;
            drop function public.worker_guard_job_columns();
            delete from realtime_worker.schema_migrations where version = '0003'""")
        async with running(database_dsn=empty_db.dsn, data_dir=tmp_path / "devstack") as stack:
            applied = await conn.fetch("select version from realtime_worker.schema_migrations")
            assert "0003" in {r["version"] for r in applied}
            assert all(a.skipped for a in await migrate.apply(conn))
            user = await make_user(conn)
            job_id = await insert_as(stack, user, FORGED)
        assert worker_columns(await job(conn, job_id)) == WORKER_DEFAULTS
    finally:
        await conn.close()


async def test_rls_a_user_cannot_download_another_users_objects(
        devstack: Devstack, supabase_service: AsyncClient, conn: asyncpg.Connection) -> None:
    alice, bob = await make_user(conn), await make_user(conn)
    png = file_options("image/png")
    await supabase_service.storage.from_("originals").upload(f"{bob}/photo.png", b"bob's", png)
    async with supabase_client(devstack.url, devstack.keys.make("authenticated", sub=str(alice))) as client:
        bucket = client.storage.from_("originals")
        await bucket.upload(f"{alice}/photo.png", b"alice's", png)
        assert await bucket.download(f"{alice}/photo.png") == b"alice's"
        with pytest.raises(StorageApiError) as caught:
            await bucket.download(f"{bob}/photo.png")
        assert caught.value.status == "404"
        assert await bucket.list(str(bob)) == []
        with pytest.raises(StorageApiError) as upload:
            await bucket.upload(f"{bob}/mine-now.png", b"x", png)
        assert upload.value.status == "403"
        assert await bucket.remove([f"{bob}/photo.png"]) == []
    assert await supabase_service.storage.from_("originals").download(f"{bob}/photo.png") == b"bob's"


async def test_admin_needs_the_service_key(devstack: Devstack) -> None:
    async with httpx.AsyncClient(base_url=devstack.url) as http:
        nobody = await http.get("/admin/faults")
        anon = await http.get("/admin/faults", headers={"apikey": devstack.anon_key})
    assert (nobody.status_code, anon.status_code) == (401, 401)


async def test_admin_faults_realtime_and_gemini_log(devstack: Devstack) -> None:
    headers = {"apikey": devstack.service_key}
    async with httpx.AsyncClient(base_url=devstack.url, headers=headers) as http:
        assert (await http.get("/admin/faults")).json()["rest_error_fraction"] == 0.0
        changed = await http.post("/admin/faults", json={"rest_error_fraction": 0.5, "seed": 7})
        assert changed.status_code == 200 and devstack.faults.rest_error_fraction == 0.5
        unknown = await http.post("/admin/faults", json={"no_such_fault": 1})
        assert unknown.status_code == 400 and "no_such_fault" in unknown.json()["message"]
        not_object = await http.post("/admin/faults", json=[1])
        assert not_object.status_code == 400
        await http.post("/admin/faults/reset")
        assert devstack.faults.rest_error_fraction == 0.0
        assert (await http.post("/admin/realtime/cut")).json() == {"ok": True}
        assert (await http.post("/admin/realtime/close")).json() == {"ok": True}
        assert (await http.get("/admin/gemini/requests")).json() == []
        generated = await http.post(
            "/v1beta/models/gemini-2.5-flash-image:generateContent",
            json={"contents": [{"role": "user", "parts": [{"text": "a cat"}]}]},
            headers={"x-goog-api-key": devstack.gemini_api_key, "apikey": ""})
        assert generated.status_code == 200
        log = (await http.get("/admin/gemini/requests")).json()
        assert [(r["model"], r["prompt"]) for r in log] == [("gemini-2.5-flash-image", "a cat")]


@pytest.mark.parametrize(("url", "local"), [
    ("postgresql://postgres@127.0.0.1:5432/postgres", True),
    ("postgresql://postgres@localhost/app", True),
    ("postgresql://postgres:@/devstack?host=/tmp/pg", True),
    ("postgresql://postgres:pw@db.abcdefgh.supabase.co:5432/postgres", False),
])
def test_devstack_command_only_uses_a_local_database(url: str, local: bool) -> None:
    if local:
        assert local_database(url) == url
    else:
        with pytest.raises(ConfigError):
            local_database(url)


def test_binds_loopback_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        Devstack(database_dsn="postgresql://unused", data_dir=tmp_path, host="0.0.0.0")


async def test_env_names_everything_a_worker_needs(devstack: Devstack) -> None:
    env = devstack.env()
    assert env["SUPABASE_URL"] == env["GEMINI_BASE_URL"] == devstack.url
    assert devstack.url.startswith("http://127.0.0.1:")
    assert devstack.keys.verify(env["SUPABASE_SERVICE_ROLE_KEY"])["role"] == "service_role"
    assert devstack.keys.verify(env["SUPABASE_ANON_KEY"])["role"] == "anon"
    assert env["GEMINI_API_KEY"] == (devstack.data_dir / "gemini_api_key").read_text().strip()
    assert env["DATABASE_URL"] == devstack.database_dsn
