"""The worker's migration: idempotent, additive, recorded, and the contract it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from realtime_worker import migrate, sql
from realtime_worker_devstack import postgres, users
from tests.conftest import Database

pytestmark = pytest.mark.integration

# DESIGN.md "Database contract": name -> (arguments, result).
CONTRACT = {
    "worker_claim_job": ("p_job_id uuid, p_worker text, p_lease_seconds integer", "SETOF jobs"),
    "worker_claim_jobs": ("p_worker text, p_limit integer, p_lease_seconds integer", "SETOF jobs"),
    "worker_heartbeat": ("p_job_id uuid, p_worker text, p_lease_seconds integer", "boolean"),
    "worker_complete_job": ("p_job_id uuid, p_worker text, p_result jsonb", "boolean"),
    "worker_fail_job": ("p_job_id uuid, p_worker text, p_error text, p_error_code text, "
                        "p_retry_in_seconds integer", "text"),
    "worker_release_job": ("p_job_id uuid, p_worker text", "boolean"),
    "worker_defer_job": ("p_job_id uuid, p_worker text, p_error text, p_error_code text, "
                         "p_retry_in_seconds integer", "text"),
    "worker_reap_expired": ("p_limit integer", "integer"),
    "worker_gemini_acquire": ("p_model text, p_worker text, p_rpm double precision, "
                              "p_max_concurrent integer, p_max_wait_seconds double precision, "
                              "p_lease_seconds integer", "jsonb"),
    "worker_gemini_release": ("p_grant uuid, p_outcome text, p_retry_in_seconds double precision",
                              "double precision"),
    "worker_queue_depth": ("", "jsonb"),
    "worker_claim_jobs_within_budget": (
        "p_worker text, p_limit integer, p_lease_seconds integer, p_job_id uuid, p_model text, "
        "p_rpm double precision, p_max_concurrent integer, p_ahead_seconds double precision, "
        "p_grant_lease_seconds integer", "jsonb"),
}
API_ROLES = ("anon", "authenticated")
GUARD_TRIGGER = "jobs_guard_worker_columns"
DEFERRALS_TRIGGER = "jobs_guard_deferrals"
NEW_JOB_COLUMNS = {
    "attempts", "max_attempts", "run_after", "locked_by", "locked_until", "heartbeat_at",
    "error_code", "credits_charged", "refunded_at", "charged_via", "deferrals",
}

# Each query returns rows of (key, value): one catalog object per row, keyed so that the
# objects present before a migration can be found again after it.
CATALOG: dict[str, str] = {
    "columns": """
        select table_name || '.' || column_name,
               jsonb_build_object('position', ordinal_position, 'type', data_type,
                                  'udt', udt_name, 'default', column_default,
                                  'nullable', is_nullable, 'generated', is_generated)
        from information_schema.columns where table_schema = 'public'""",
    "tables": """
        select c.relname, jsonb_build_object('rls', c.relrowsecurity, 'force', c.relforcerowsecurity,
                                             'acl', c.relacl::text[])
        from pg_class c where c.relnamespace = 'public'::regnamespace and c.relkind = 'r'""",
    "indexes": """
        select indexname, to_jsonb(indexdef) from pg_indexes where schemaname = 'public'""",
    "constraints": """
        select conrelid::regclass::text || '.' || conname, to_jsonb(pg_get_constraintdef(oid))
        from pg_constraint where connamespace = 'public'::regnamespace""",
    "functions": """
        select p.oid::regprocedure::text,
               jsonb_build_object('definition', pg_get_functiondef(p.oid),
                                  'result', pg_get_function_result(p.oid),
                                  'security_definer', p.prosecdef, 'config', p.proconfig,
                                  'acl', p.proacl::text[], 'volatility', p.provolatile)
        from pg_proc p where p.pronamespace = 'public'::regnamespace""",
    "policies": """
        select tablename || '.' || policyname,
               jsonb_build_object('cmd', cmd, 'roles', roles, 'permissive', permissive,
                                  'qual', qual, 'with_check', with_check)
        from pg_policies where schemaname in ('public', 'storage')""",
    "triggers": """
        select tgrelid::regclass::text || '.' || tgname,
               jsonb_build_object('definition', pg_get_triggerdef(oid), 'enabled', tgenabled)
        from pg_trigger where not tgisinternal""",
    "enums": """
        select t.typname, to_jsonb(array_agg(e.enumlabel order by e.enumsortorder))
        from pg_type t join pg_enum e on e.enumtypid = t.oid
        where t.typnamespace = 'public'::regnamespace group by t.typname""",
    "publications": """
        select pubname || ':' || schemaname || '.' || tablename, 'true'::jsonb
        from pg_publication_tables""",
}

Snapshot = dict[str, dict[str, Any]]


async def snapshot(conn: asyncpg.Connection) -> Snapshot:
    await conn.execute("set search_path = public")
    result: Snapshot = {}
    for kind, query in CATALOG.items():
        rows = await conn.fetch(query)
        result[kind] = {row[0]: json.loads(row[1]) for row in rows}
        assert len(result[kind]) == len(rows), f"{kind}: keys are not unique"
    return result


def restricted(after: Snapshot, before: Snapshot) -> Snapshot:
    """``after`` limited to the objects that existed ``before``."""
    return {kind: {key: after[kind].get(key, "<gone>") for key in objects}
            for kind, objects in before.items()}


async def install_app(dsn: str) -> None:
    """The Supabase base and the app's schema, without the worker's migration."""
    conn = await asyncpg.connect(dsn)
    try:
        folder = postgres.fixtures_dir()
        for name in (postgres.BASE_SQL, postgres.APP_SQL):
            await conn.execute((folder / name).read_text("utf-8"))
    finally:
        await conn.close()


# --- applied twice -----------------------------------------------------------------------------


async def test_applying_twice_yields_an_identical_catalog(conn: asyncpg.Connection) -> None:
    first = await snapshot(conn)
    assert [a.skipped for a in await migrate.apply(conn)] == [True] * len(sql.migrations())
    assert await snapshot(conn) == first
    assert [a.skipped for a in await migrate.apply(conn, force=True)] == [False] * len(sql.migrations())
    assert await snapshot(conn) == first
    assert set(CONTRACT) <= {key.split("(")[0] for key in first["functions"]}


BROADCAST_OBJECTS = (
    "select tgname from pg_trigger where tgrelid = 'public.jobs'::regclass and not tgisinternal",
    "select polname, polpermissive, polroles::regrole[]::text[], polcmd::text from pg_policy"
    " where polrelid = 'realtime.messages'::regclass order by polname",
)


async def broadcast_objects(conn: asyncpg.Connection) -> list[list[tuple[object, ...]]]:
    return [[tuple(row) for row in await conn.fetch(query)] for query in BROADCAST_OBJECTS]


async def test_the_broadcast_wakeup_is_applied_on_request_and_twice_harmlessly(
        conn: asyncpg.Connection) -> None:
    assert "0020" not in {m.version for m in sql.migrations()}
    without = await broadcast_objects(conn)
    applied = await migrate.apply(conn, wakeup="broadcast")
    assert [(a.version, a.skipped) for a in applied if not a.skipped] == [("0020", False)]
    once = await broadcast_objects(conn)
    await migrate.apply(conn, wakeup="broadcast", force=True)
    assert await broadcast_objects(conn) == once
    triggers, policies = once
    assert set(triggers) - set(without[0]) == {("worker_broadcast_job_insert",)}
    assert policies == [("worker_jobs_topic_not_for_users", False, ["anon", "authenticated"], "*"),
                        ("worker_jobs_topic_service_role", True, ["service_role"], "r")]
    assert "worker:jobs" in sql.full_script(wakeup="broadcast") and "worker:jobs" not in sql.full_script()


async def test_functions_match_the_contract(conn: asyncpg.Connection) -> None:
    await conn.execute("set search_path = public")
    rows = await conn.fetch("""
        select proname, pg_get_function_arguments(oid) as args,
               pg_get_function_result(oid) as result, prosecdef, proconfig
        from pg_proc where pronamespace = 'public'::regnamespace and proname = any($1::text[])""",
        list(CONTRACT))
    assert {r["proname"]: (r["args"], r["result"]) for r in rows} == CONTRACT
    for row in rows:
        assert row["prosecdef"], f"{row['proname']} is not security definer"
        paths = [c for c in row["proconfig"] or [] if c.startswith("search_path=")]
        assert len(paths) == 1, f"{row['proname']} has no fixed search_path"
        schemas = [s.strip() for s in paths[0].removeprefix("search_path=").split(",")]
        assert schemas[-1] == "pg_temp" and "$user" not in paths[0], paths[0]


async def test_only_service_role_may_execute_worker_functions(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch("""
        select p.oid::regprocedure::text as fn, p.proname,
               has_function_privilege('service_role', p.oid, 'execute') as service_role,
               has_function_privilege('anon', p.oid, 'execute') as anon,
               has_function_privilege('authenticated', p.oid, 'execute') as authenticated,
               exists (select 1 from aclexplode(p.proacl) a
                       where a.grantee = 0 and a.privilege_type = 'EXECUTE') as public
        from pg_proc p
        where p.pronamespace = 'public'::regnamespace and p.proname like 'worker\\_%'""")
    assert {r["proname"] for r in rows} >= set(CONTRACT)
    for row in rows:
        assert not (row["anon"] or row["authenticated"] or row["public"]), row["fn"]
        # Helpers outside the contract (the refund) are not callable over the API at all.
        assert row["service_role"] == (row["proname"] in CONTRACT), row["fn"]


async def test_worker_columns_guard_runs_as_the_caller_on_every_write(
        conn: asyncpg.Connection) -> None:
    row = await conn.fetchrow("""
        select pg_get_triggerdef(t.oid) as definition, t.tgenabled::text, p.prosecdef, p.proconfig,
               p.proacl::text[] as acl
        from pg_trigger t join pg_proc p on p.oid = t.tgfoid
        where t.tgrelid = 'public.jobs'::regclass and t.tgname = $1""", GUARD_TRIGGER)
    assert row is not None
    assert "BEFORE INSERT OR UPDATE ON public.jobs FOR EACH ROW" in row["definition"]
    assert row["tgenabled"] == "O"
    # Invoker, so that current_user is the API role of the request, with a fixed search_path.
    assert not row["prosecdef"]
    assert row["proconfig"] == ["search_path=public, pg_temp"]
    assert not any(entry.startswith(("=", "anon=", "authenticated=", "service_role="))
                   for entry in row["acl"]), row["acl"]


async def test_a_signed_in_user_cannot_choose_a_jobs_deferrals(conn: asyncpg.Connection) -> None:
    user = await users.create(conn, 3)
    async with conn.transaction():
        await conn.execute("set local role authenticated")
        await conn.execute("select set_config('request.jwt.claim.sub', $1, true)", str(user))
        job_id = await conn.fetchval(
            "insert into public.jobs (user_id, params_json, deferrals) values ($1, '{}', -1000)"
            " returning id", user)
        await conn.execute("update public.jobs set deferrals = -5 where id = $1", job_id)
    assert await conn.fetchval("select deferrals from public.jobs where id = $1", job_id) == 0
    await conn.execute("update public.jobs set deferrals = 4 where id = $1", job_id)  # the owner may
    assert await conn.fetchval("select deferrals from public.jobs where id = $1", job_id) == 4


async def test_publication_and_partial_indexes(conn: asyncpg.Connection) -> None:
    assert await conn.fetchval("""
        select count(*) from pg_publication_tables
        where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'jobs'""") == 1
    rows = await conn.fetch("""
        select c.relname, i.indisunique, pg_get_expr(i.indpred, i.indrelid) as predicate,
               pg_get_indexdef(i.indexrelid) as definition
        from pg_index i join pg_class c on c.oid = i.indexrelid
        where c.relname = any($1::text[])""",
        ["jobs_queued_created_at_idx", "jobs_running_locked_until_idx",
         "credit_events_job_id_reason_key"])
    found = {r["relname"]: r for r in rows}
    assert found["jobs_queued_created_at_idx"]["predicate"] == "(status = 'queued'::job_status)"
    assert "(created_at, id)" in found["jobs_queued_created_at_idx"]["definition"]
    assert found["jobs_running_locked_until_idx"]["predicate"] == "(status = 'running'::job_status)"
    assert "(locked_until)" in found["jobs_running_locked_until_idx"]["definition"]
    refund = found["credit_events_job_id_reason_key"]
    assert refund["indisunique"] and refund["predicate"] == "(job_id IS NOT NULL)"


async def test_publication_created_when_missing(empty_db: Database) -> None:
    await install_app(empty_db.dsn)
    conn = await asyncpg.connect(empty_db.dsn)
    try:
        await conn.execute("drop publication supabase_realtime")
        await migrate.apply(conn)
        await migrate.apply(conn, force=True)
        tables = await conn.fetch(
            "select tablename from pg_publication_tables where pubname = 'supabase_realtime'")
        assert [r["tablename"] for r in tables] == ["jobs"]
    finally:
        await conn.close()


# --- applied onto the app's schema with rows in it --------------------------------------------

DATA_TABLES = ("users", "credits", "jobs", "assets", "credit_events")


async def seed_app_rows(conn: asyncpg.Connection) -> uuid.UUID:
    user = await users.create(conn, 7)  # sign-up (3) and a purchase (4): two ledger rows
    await conn.execute("update public.users set last_login_at = now() - interval '1 day' where id = $1", user)
    for status in ("queued", "running", "succeeded", "failed"):
        await conn.execute("""
            insert into public.jobs (user_id, status, params_json, cost_cents, model, started_at,
                                     ended_at, error, created_at, updated_at)
            values ($1, $2::job_status, $3::jsonb, 4, 'gemini-old',
                    case when $2 <> 'queued' then now() - interval '2 min' end,
                    case when $2 in ('succeeded', 'failed') then now() - interval '1 min' end,
                    case when $2 = 'failed' then 'Generation failed' end,
                    now() - interval '3 min', now() - interval '3 min')""",
            user, status, json.dumps({"text_prompt": f"a {status} cat", "paper_size": "Letter"}))
    for kind in ("original", "preprocessed", "edge_map", "pdf", "thumbnail"):
        await conn.execute("""insert into public.assets (user_id, kind, storage_path, width,
                                                         height, bytes, hash)
                              values ($1, $2::asset_kind, $3, 10, 20, 30, 'h')""",
                           user, kind, f"{user}/x/{kind}")
    return user


async def table_rows(conn: asyncpg.Connection, columns: dict[str, set[str]]) -> dict[str, Any]:
    """Every row of the app's tables as JSON, limited to the columns the app created."""
    data = {}
    for table in DATA_TABLES:
        rows = await conn.fetch(f"select to_jsonb(t)::text as row from public.{table} t")
        objects = [{k: v for k, v in json.loads(r["row"]).items() if k in columns[table]}
                   for r in rows]
        data[table] = sorted(objects, key=lambda o: json.dumps(o, sort_keys=True))
    return data


async def test_migration_onto_existing_rows_changes_nothing_existing(empty_db: Database) -> None:
    await install_app(empty_db.dsn)
    conn = await asyncpg.connect(empty_db.dsn)
    try:
        await seed_app_rows(conn)
        before = await snapshot(conn)
        columns: dict[str, set[str]] = {table: set() for table in DATA_TABLES}
        for key in before["columns"]:
            table, column = key.split(".")
            columns.setdefault(table, set()).add(column)
        rows_before = await table_rows(conn, columns)
        assert [len(rows_before[t]) for t in DATA_TABLES] == [1, 1, 4, 5, 2]

        await migrate.apply(conn)
        after = await snapshot(conn)
        assert restricted(after, before) == before
        for kind in ("enums", "policies", "tables"):
            assert after[kind] == before[kind], kind
        assert after["triggers"].keys() - before["triggers"].keys() == {
            f"jobs.{GUARD_TRIGGER}", f"jobs.{DEFERRALS_TRIGGER}"}
        assert await table_rows(conn, columns) == rows_before

        added = {k.split(".")[1] for k in after["columns"].keys() - before["columns"].keys()
                 if k.startswith("jobs.")}
        assert added == NEW_JOB_COLUMNS
        jobs = await conn.fetch("select * from public.jobs")
        for job in jobs:
            assert (job["attempts"], job["max_attempts"], job["credits_charged"]) == (0, 3, 1)
            assert job["run_after"] is not None
            assert job["locked_by"] is job["locked_until"] is job["heartbeat_at"] is None
            assert job["error_code"] is job["refunded_at"] is None
            assert job["charged_via"] == "direct"  # the app inserted them: refunds by the rule of 0004
        assert await conn.fetchval("select count(*) from credit_events where job_id is null") == 2
    finally:
        await conn.close()


# --- the command line ---------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path, database_url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return subprocess.run([sys.executable, "-m", "realtime_worker", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.e2e
async def test_migrate_command_records_and_skips(empty_db: Database, tmp_path: Path) -> None:
    await install_app(empty_db.dsn)
    first = run_cli("migrate", cwd=tmp_path, database_url=empty_db.dsn)
    assert first.returncode == 0, first.stderr
    names = [f"{m.version}_{m.name}" for m in sql.migrations()]
    assert first.stdout.splitlines() == [f"{n}: applied" for n in names]

    conn = await asyncpg.connect(empty_db.dsn)
    try:
        recorded = await conn.fetch(
            "select version, name, checksum from realtime_worker.schema_migrations order by version")
        assert [tuple(r) for r in recorded] == [
            (m.version, m.name, migrate.checksum(m.sql)) for m in sql.migrations()]
        assert await conn.fetchval("select count(*) from pg_proc where proname = 'worker_claim_jobs'") == 1
    finally:
        await conn.close()

    second = run_cli("migrate", cwd=tmp_path, database_url=empty_db.dsn)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [f"{n}: already applied" for n in names]


@pytest.mark.e2e
def test_migrate_without_database_url_names_it(tmp_path: Path) -> None:
    result = run_cli("migrate", cwd=tmp_path, database_url=None)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "DATABASE_URL" in line
    assert result.stdout == ""


@pytest.mark.e2e
def test_migrate_unreachable_database_hides_the_password(tmp_path: Path) -> None:
    password = "hunter2-SECRET-pw"
    result = run_cli("migrate", cwd=tmp_path,
                     database_url=f"postgresql://postgres:{password}@127.0.0.1:1/postgres")
    assert result.returncode == 1
    assert "cannot connect to DATABASE_URL" in result.stderr
    assert password not in result.stderr + result.stdout


@pytest.mark.e2e
async def test_sql_command_prints_an_applicable_script(empty_db: Database, tmp_path: Path) -> None:
    result = run_cli("sql", cwd=tmp_path, database_url=None)
    assert result.returncode == 0, result.stderr
    for name in CONTRACT:
        assert f"function public.{name}(" in result.stdout
    await install_app(empty_db.dsn)
    conn = await asyncpg.connect(empty_db.dsn)
    try:
        await conn.execute(result.stdout)  # as `supabase db push` would run it
        await conn.execute(result.stdout)
        found = await conn.fetchval(
            "select count(*) from pg_proc where proname = any($1::text[])", list(CONTRACT))
        assert found == len(CONTRACT)
    finally:
        await conn.close()
