"""``realtime-worker check`` against the devstack: all ✓, then each broken piece gives its own ✗;
with ``WAKEUP_SOURCE=broadcast`` the Realtime line checks the Broadcast migration and private join.

Cases run the check's entry point in-process (``check.run_checks``) or the CLI as a subprocess
(the devstack keeps serving in this test's event loop while the subprocess runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from bench.harness import free_port
from realtime_worker import check, check_outcome, check_realtime, config, migrate
from realtime_worker.config import WorkerSettings
from realtime_worker_devstack import postgres, server
from realtime_worker_devstack.db import Database as StackDatabase
from realtime_worker_devstack.keys import Keys
from realtime_worker_devstack.server import Devstack, running
from tests.conftest import Database

pytestmark = [
    pytest.mark.integration,
    # google-genai subclasses aiohttp.ClientSession for every session it opens.
    pytest.mark.filterwarnings("ignore:Inheritance class Aiohttp:DeprecationWarning"),
]

ITEMS = ["configuration", "Supabase REST", "Storage buckets", "Realtime", "Gemini"]
WITHIN = 10.0


def settings_for(devstack: Devstack, **env: str) -> WorkerSettings:
    return config.load(WorkerSettings, **{**devstack.env(), "PORT": "0", **env}, _env_file=None)


async def outcomes(devstack: Devstack, **env: str) -> dict[str, check_outcome.Outcome]:
    settings = settings_for(devstack, **env)
    with anyio.fail_after(3 * WITHIN):
        found = await check.run_checks(settings, within=WITHIN)
    return {outcome.item: outcome for outcome in found}


def clean_env(**env: str) -> dict[str, str]:
    """This process's environment without any Supabase, Gemini or database setting, plus ``env``."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SUPABASE", "NEXT_PUBLIC_SUPABASE", "GEMINI", "DATABASE_URL"))}
    return {**base, **env}


async def run_cli(env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """``realtime-worker check`` as a subprocess; exit code and stdout + stderr."""
    with anyio.fail_after(60):
        done = await anyio.run_process([sys.executable, "-m", "realtime_worker", "check", "--timeout",
                                        str(WITHIN)], env=env, cwd=cwd, check=False,
                                       stderr=subprocess.STDOUT)
    return done.returncode, done.stdout.decode()


def marks(text: str) -> dict[str, str]:
    """``{item: "✓" | "✗"}`` from the printed lines."""
    found = {}
    for line in text.splitlines():
        mark, _, rest = line.partition(" ")
        if mark in ("✓", "✗"):
            found[rest.split(":", 1)[0]] = mark
    return found


# --- all good ----------------------------------------------------------------------------------


async def test_all_green_through_the_cli(devstack: Devstack, tmp_path: Path) -> None:
    code, out = await run_cli(clean_env(**devstack.env()), tmp_path)
    assert marks(out) == dict.fromkeys(ITEMS, "✓"), out
    assert code == 0, out
    assert "Subscribed to PostgreSQL" in out
    for secret in (devstack.service_key, devstack.gemini_api_key, devstack.keys.secret):
        assert secret not in out


async def test_all_green_in_process(devstack: Devstack) -> None:
    found = await outcomes(devstack)
    assert all(o.ok for o in found.values()), [o.line() for o in found.values()]
    assert list(found) == ITEMS[1:]


# --- one broken piece at a time ----------------------------------------------------------------


async def test_wrong_service_key_through_the_cli(devstack: Devstack, tmp_path: Path) -> None:
    wrong = Keys("another-projects-secret-" + "x" * 24).service_role
    code, out = await run_cli(clean_env(**{**devstack.env(), "SUPABASE_SERVICE_ROLE_KEY": wrong}),
                              tmp_path)
    assert code == 1, out
    lines = {line.split(":", 1)[0]: line for line in out.splitlines() if line.startswith(("✓", "✗"))}
    assert "SUPABASE_SERVICE_ROLE_KEY rejected" in lines["✗ Supabase REST"], out
    assert "fix: set SUPABASE_SERVICE_ROLE_KEY" in lines["✗ Supabase REST"]
    assert "SUPABASE_SERVICE_ROLE_KEY rejected" in lines["✗ Storage buckets"], out
    assert lines["✗ Realtime"], out
    assert marks(out)["Gemini"] == "✓"
    assert wrong not in out and devstack.service_key not in out


async def test_anon_key_instead_of_the_service_key(devstack: Devstack) -> None:
    found = await outcomes(devstack, SUPABASE_SERVICE_ROLE_KEY=devstack.anon_key)
    assert not found["Supabase REST"].ok
    assert "not the service_role key" in found["Supabase REST"].detail


async def test_unreachable_url(devstack: Devstack) -> None:
    found = await outcomes(devstack, SUPABASE_URL=f"http://127.0.0.1:{free_port()}")
    for item in ("Supabase REST", "Storage buckets", "Realtime"):
        assert not found[item].ok, found[item]
        assert found[item].detail.startswith("SUPABASE_URL unreachable"), found[item]
        assert found[item].fix == check_outcome.URL_FIX
    assert found["Gemini"].ok


async def test_wrong_gemini_key(devstack: Devstack) -> None:
    found = await outcomes(devstack, GEMINI_API_KEY="AIzaSyWrongKey" + "x" * 25)
    assert (found["Gemini"].ok, found["Gemini"].detail) == (False, "GEMINI_API_KEY rejected")
    assert "Google AI Studio" in (found["Gemini"].fix or "")
    assert all(found[item].ok for item in ITEMS[1:4])


async def test_unknown_gemini_model(devstack: Devstack) -> None:
    found = await outcomes(devstack, GEMINI_MODEL="gemini-0-no-such-model")
    assert not found["Gemini"].ok
    assert found["Gemini"].detail == "model gemini-0-no-such-model not found"


async def test_missing_bucket(devstack: Devstack) -> None:
    async with devstack.db.admin() as conn:
        await conn.execute("delete from storage.buckets where id = 'artifacts_previews'")
    found = await outcomes(devstack)
    assert not found["Storage buckets"].ok
    assert found["Storage buckets"].detail == "missing: artifacts_previews"


async def test_invalid_configuration_through_the_cli(tmp_path: Path) -> None:
    code, out = await run_cli(clean_env(SUPABASE_URL="not-a-url"), tmp_path)
    assert code == 1, out
    line = next(line for line in out.splitlines() if line.startswith("✗ configuration"))
    assert "SUPABASE_URL is invalid" in line and "SUPABASE_SERVICE_ROLE_KEY is missing" in line
    assert "GEMINI_API_KEY is missing" in line and "fix:" in line
    assert marks(out) == {"configuration": "✗"}


# --- the migration is missing ------------------------------------------------------------------


async def install_app_only(dsn: str) -> None:
    """Supabase's base schema and the app's schema, as a project has them before the worker."""
    conn = await asyncpg.connect(dsn)
    try:
        for name in (postgres.BASE_SQL, postgres.APP_SQL):
            await conn.execute((postgres.fixtures_dir() / name).read_text("utf-8"))
    finally:
        await conn.close()


@pytest.fixture
async def stack_without_migration(empty_db: Database, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Devstack]:
    """A devstack over a database with the app's schema but not the worker's migration."""
    await install_app_only(empty_db.dsn)

    async def leave_as_is(db: StackDatabase) -> bool:
        return False

    monkeypatch.setattr(server, "ensure_schema", leave_as_is)  # start() would install it
    async with running(database_dsn=empty_db.dsn, data_dir=tmp_path / "devstack") as stack:
        yield stack


async def test_missing_migration_through_the_cli(stack_without_migration: Devstack, tmp_path: Path) -> None:
    async with stack_without_migration.db.admin() as conn:
        assert await conn.fetchval("select to_regprocedure('public.worker_reap_expired(int)')") is None
    code, out = await run_cli(clean_env(**stack_without_migration.env()), tmp_path)
    assert code == 1, out
    line = next(line for line in out.splitlines() if line.startswith("✗ Supabase REST"))
    assert "migration not applied" in line
    assert "fix: run `realtime-worker migrate` or apply `realtime-worker sql`" in line
    realtime = next(line for line in out.splitlines() if line.startswith("✗ Realtime"))
    assert "subscription refused" in realtime and "supabase_realtime publication" in realtime
    assert marks(out)["Storage buckets"] == "✓" and marks(out)["Gemini"] == "✓"


# --- WAKEUP_SOURCE=broadcast ---------------------------------------------------------------------


def line_of(out: str, start: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(start))


@pytest.fixture
async def broadcast_stack(devstack: Devstack) -> Devstack:
    """The devstack over a database with the Broadcast wake-up's migration (0020) applied."""
    await migrate.migrate(devstack.database_dsn, wakeup="broadcast")
    return devstack


async def test_broadcast_joins_the_private_topic(broadcast_stack: Devstack) -> None:
    found = await outcomes(broadcast_stack, WAKEUP_SOURCE="broadcast")
    assert all(o.ok for o in found.values()), [o.line() for o in found.values()]
    assert found["Realtime"].detail.startswith("private channel worker:jobs joined with the service-role key")


async def test_broadcast_without_its_migration(devstack: Devstack) -> None:
    found = await outcomes(devstack, WAKEUP_SOURCE="broadcast")  # the devstack installs 0001.. only
    realtime = found["Realtime"]
    assert not realtime.ok
    assert "migration is not applied (worker_broadcast_topic not found)" in realtime.detail
    assert realtime.fix == check_realtime.BROADCAST_FIX
    assert "`realtime-worker migrate --wakeup broadcast`" in realtime.line()
    assert all(found[item].ok for item in ("Supabase REST", "Storage buckets", "Gemini"))


async def test_broadcast_private_join_refused_through_the_cli(broadcast_stack: Devstack,
                                                              tmp_path: Path) -> None:
    # service_role bypasses RLS (on Supabase as in fixtures/supabase_base.sql), so dropping
    # 0020's policy alone changes nothing for it; without SELECT on realtime.messages the
    # server's read check fails and it refuses the join as it does for an RLS refusal.
    async with broadcast_stack.db.admin() as conn:
        await conn.execute("revoke select on realtime.messages from service_role")
    code, out = await run_cli(clean_env(**broadcast_stack.env(), WAKEUP_SOURCE="broadcast"), tmp_path)
    assert code == 1, out
    realtime = line_of(out, "✗ Realtime")
    assert "private join of worker:jobs refused: Unauthorized" in realtime, out
    assert "policy worker_jobs_topic_service_role" in realtime
    assert "`realtime-worker migrate --wakeup broadcast --force`" in realtime
    assert {item: mark for item, mark in marks(out).items() if item != "Realtime"} == dict.fromkeys(
        ["configuration", "Supabase REST", "Storage buckets", "Gemini"], "✓"), out
    for secret in (broadcast_stack.service_key, broadcast_stack.gemini_api_key, broadcast_stack.keys.secret):
        assert secret not in out
