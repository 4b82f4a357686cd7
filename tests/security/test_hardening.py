"""The opt-in hardening (``migrate --harden``, ``sql --harden``): idempotent, recorded, and what it
takes from signed-in users (direct writes) and leaves them (reads, create_job) and the service role."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from postgrest.exceptions import APIError

from realtime_worker import cli, migrate, sql
from realtime_worker_devstack.server import Devstack
from tests.conftest import Database
from tests.devstack_fixtures import rows
from tests.integration.test_migration import snapshot
from tests.security.support import SIGNUP_CREDITS, as_user, balance_of, sign_up

pytestmark = pytest.mark.integration

TEXT = {"text_prompt": "a tiger eating a burger", "complexity": "standard", "line_thickness": "medium"}
HARDENING = [f"{m.version}_{m.name}" for m in sql.hardening()]


async def harden(conn: asyncpg.Connection) -> list[migrate.Applied]:
    return await migrate.apply(conn, harden=True)


async def test_hardening_is_opt_in_recorded_and_idempotent(conn: asyncpg.Connection) -> None:
    plain = await snapshot(conn)
    assert all(a.skipped for a in await migrate.apply(conn))
    assert await snapshot(conn) == plain  # without the flag nothing is revoked
    applied = await harden(conn)
    assert [f"{a.version}_{a.name}" for a in applied if not a.skipped] == HARDENING
    hardened = await snapshot(conn)
    assert hardened["tables"]["jobs"] != plain["tables"]["jobs"]
    assert all(a.skipped for a in await harden(conn))
    await migrate.apply(conn, force=True, harden=True)
    await migrate.apply(conn, force=True)  # the plain migrations never undo the hardening
    assert await snapshot(conn) == hardened
    versions = await conn.fetch("select version from realtime_worker.schema_migrations")
    assert {m.version for m in sql.hardening()} <= {r["version"] for r in versions}


PRIVILEGES = """
    select has_table_privilege($1, 'public.jobs', 'insert') as jobs_insert,
           has_table_privilege($1, 'public.jobs', 'update') as jobs_update,
           has_table_privilege($1, 'public.credits', 'update') as credits_update,
           has_table_privilege($1, 'public.credits', 'insert') as credits_insert,
           has_table_privilege($1, 'public.credit_events', 'insert') as events_insert,
           has_function_privilege($1, 'public.increment_user_credits(uuid, integer)', 'execute') as increment,
           has_table_privilege($1, 'public.jobs', 'select') as jobs_select,
           has_table_privilege($1, 'public.credits', 'select') as credits_select,
           has_function_privilege($1, 'public.create_job(jsonb)', 'execute') as create_job"""


@pytest.mark.parametrize("hardened", [False, True])
async def test_who_may_write_what(conn: asyncpg.Connection, hardened: bool) -> None:
    if hardened:
        await harden(conn)
    for role in ("anon", "authenticated", "service_role"):
        found = dict(await conn.fetchrow(PRIVILEGES, role) or {})
        writes = {k: found.pop(k) for k in
                  ("jobs_insert", "jobs_update", "credits_update", "credits_insert", "events_insert",
                   "increment")}
        assert set(writes.values()) == {role == "service_role" or not hardened}, (role, writes)
        assert found == {"jobs_select": True, "credits_select": True,
                         "create_job": role == "authenticated"}, role


@pytest.fixture
async def hardened_stack(devstack: Devstack, conn: asyncpg.Connection) -> AsyncIterator[Devstack]:
    await harden(conn)
    yield devstack


async def test_after_hardening_a_user_writes_only_through_create_job(
        hardened_stack: Devstack, conn: asyncpg.Connection) -> None:
    user = await sign_up(conn)
    async with as_user(hardened_stack, user) as client:
        attempts: list[Any] = [
            client.table("jobs").insert({"user_id": str(user), "params_json": TEXT}),
            client.table("credits").update({"balance": 1000}).eq("user_id", str(user)),
            client.table("credit_events").insert({"user_id": str(user), "delta": 1000, "reason": "gift"}),
            client.rpc("increment_user_credits", {"user_id": str(user), "amount": 1000}),
        ]
        for attempt in attempts:
            with pytest.raises(APIError) as refused:
                await attempt.execute()
            assert refused.value.code == "42501"
        made = await client.rpc("create_job", {"p_params": TEXT}).execute()
        mine = await client.table("jobs").select("id").execute()
        credits = await client.table("credits").select("balance").execute()
    assert isinstance(made.data, dict)
    assert [r["id"] for r in rows(mine.data)] == [made.data["id"]]
    assert rows(credits.data) == [{"balance": SIGNUP_CREDITS - 1}]


async def test_after_hardening_the_service_role_keeps_its_writes(
        hardened_stack: Devstack, conn: asyncpg.Connection) -> None:
    user = await sign_up(conn)
    headers = {"apikey": hardened_stack.service_key}
    async with httpx.AsyncClient(base_url=hardened_stack.url, headers=headers) as http:
        purchase = await http.post("/rest/v1/credit_events", json={
            "user_id": str(user), "delta": 10, "reason": "Credit pack purchase", "stripe_event_id": "cs_1"})
        credit = await http.post("/rest/v1/rpc/increment_user_credits",
                                 json={"user_id": str(user), "amount": 10})
        job = await http.post("/rest/v1/jobs", json={"user_id": str(user), "params_json": TEXT})
    assert (purchase.status_code, credit.status_code, job.status_code) == (201, 204, 201)
    assert await balance_of(conn, user) == SIGNUP_CREDITS + 10


def test_sql_prints_the_hardening_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sql"]) == 0
    plain = capsys.readouterr().out
    assert cli.main(["sql", "--harden"]) == 0
    hardened = capsys.readouterr().out
    assert "revoke insert, update on table public.jobs" not in plain
    assert hardened.startswith(plain)
    assert all(f"-- realtime-worker migration {name}" in hardened for name in HARDENING)


def test_migrate_harden_applies_and_reports(db: Database, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    assert cli.main(["migrate", "--harden"]) == 0
    assert [f"{name}: applied" for name in HARDENING] == [
        line for line in capsys.readouterr().out.splitlines() if line.startswith(HARDENING[0][:4])]
    assert cli.main(["migrate", "--harden"]) == 0
    assert f"{HARDENING[0]}: already applied" in capsys.readouterr().out


async def test_create_job_signature_is_the_contract(conn: asyncpg.Connection) -> None:
    """The app calls rpc('create_job', {p_params}); the caller comes from the JWT, never an argument."""
    row = await conn.fetchrow("""
        select pg_get_function_arguments(p.oid) as args, pg_get_function_result(p.oid) as result,
               p.prosecdef, p.proconfig
        from pg_proc p where p.oid = 'public.create_job(jsonb)'::regprocedure""")
    assert row is not None
    assert (row["args"], row["result"], row["prosecdef"]) == ("p_params jsonb", "jobs", True)
    assert row["proconfig"] == ["search_path=public, pg_temp"]
