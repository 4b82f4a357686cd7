"""``/ready`` tells the truth about the database and the Realtime subscription, through real outages.

The server is an embedded Postgres that only this test uses (stopped with ``pg_ctl stop`` and
started again in place), under the devstack as its own process and a worker process in realtime
mode. ``/ready`` must answer 503 within 5 s of the server going away and 200 within 5 s of its
return: the acceptance figures of issue 16, printed as measured.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import pytest

from bench import chaos_load
from bench.chaos_stack import DevstackProcess, EmbeddedPostgres, start_devstack, stop_process, worker_env
from bench.harness import free_port
from tests.waiting import wait_for
from tests.workers import spawn_worker

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.fixture
async def own_postgres(tmp_path: Path) -> AsyncIterator[EmbeddedPostgres]:
    pg = await anyio.to_thread.run_sync(EmbeddedPostgres.start, tmp_path / "pg")
    try:
        yield pg
    finally:
        await anyio.to_thread.run_sync(pg.stop)


@pytest.fixture
async def stack(own_postgres: EmbeddedPostgres, tmp_path: Path) -> AsyncIterator[DevstackProcess]:
    dsn = await chaos_load.prepare_database(own_postgres.admin_dsn)
    devstack = await start_devstack(tmp_path, dsn, seed=1, gemini_history=100)
    try:
        yield devstack
    finally:
        await stop_process(devstack.process)


async def ready_status(http: httpx.AsyncClient) -> int:
    try:
        return (await http.get("/ready")).status_code
    except httpx.HTTPError:
        return 0  # no answer in time counts as not ready, but is not what this test wants


async def test_ready_follows_a_database_outage_within_5_s(
        own_postgres: EmbeddedPostgres, stack: DevstackProcess, tmp_path: Path) -> None:
    port = free_port()
    env = worker_env(stack, {"PORT": str(port), "WORKER_ID": "ready", "WORKER_MODE": "realtime",
                             "SHUTDOWN_GRACE_SECONDS": "1"})
    worker = await spawn_worker(env, log=tmp_path / "worker.log")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=4.0) as http:
            await wait_for(lambda: is_status(http, 200), within=90, step=0.1, what="ready")
            await anyio.to_thread.run_sync(own_postgres.halt)
            gone = time.monotonic()
            await wait_for(lambda: is_status(http, 503), within=5, step=0.1, what="503 in the outage")
            to_503 = time.monotonic() - gone
            await anyio.to_thread.run_sync(own_postgres.resume)
            back = time.monotonic()
            await wait_for(lambda: is_status(http, 200), within=5, step=0.1, what="200 after it")
            to_200 = time.monotonic() - back
        print(f"/ready: 503 {to_503:.2f} s after Postgres stopped, 200 {to_200:.2f} s after it "
              "started again")
    finally:
        assert await stop_process(worker) == 0


async def is_status(http: httpx.AsyncClient, status: int) -> bool:
    return await ready_status(http) == status


async def test_ready_follows_a_realtime_outage_within_5_s(stack: DevstackProcess, tmp_path: Path) -> None:
    """In realtime mode the subscription is part of readiness: the devstack's Realtime endpoint
    refuses connections (503) and every open socket is cut; then it accepts again."""
    port = free_port()
    env = worker_env(stack, {"PORT": str(port), "WORKER_ID": "ready-rt", "WORKER_MODE": "realtime",
                             "SHUTDOWN_GRACE_SECONDS": "1"})
    worker = await spawn_worker(env, log=tmp_path / "worker.log")
    try:
        async with (httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=4.0) as http,
                    stack.http() as admin):
            await wait_for(lambda: is_status(http, 200), within=90, step=0.1, what="ready")
            await refuse_realtime(admin, True)
            (await admin.post("/admin/realtime/cut")).raise_for_status()
            gone = time.monotonic()
            await wait_for(lambda: is_status(http, 503), within=5, step=0.1, what="503 in the outage")
            to_503 = time.monotonic() - gone
            await refuse_realtime(admin, False)
            back = time.monotonic()
            await wait_for(lambda: is_status(http, 200), within=5, step=0.1, what="200 after it")
            to_200 = time.monotonic() - back
        print(f"/ready: 503 {to_503:.2f} s after Realtime went away, 200 {to_200:.2f} s after it "
              "came back")
    finally:
        assert await stop_process(worker) == 0


async def refuse_realtime(admin: httpx.AsyncClient, refuse: bool) -> None:
    (await admin.post("/admin/faults", json={"realtime_refuse_connections": refuse})).raise_for_status()
