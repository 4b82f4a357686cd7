"""The worker over the devstack: Realtime pickup, the sweep as fallback, resubscription."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import anyio
import asyncpg
import pytest

from realtime_worker import migrate
from realtime_worker.errors import ConfigError
from realtime_worker.health_state import RealtimeLink
from realtime_worker.listener import Listener
from realtime_worker.metrics import Metrics
from realtime_worker.worker import Worker
from realtime_worker_devstack.server import Devstack
from tests.conftest import Database
from tests.helpers import insert_job, make_user, sample
from tests.waiting import wait_for
from tests.workers import claimed, listener_settings, running_worker, statuses

pytestmark = pytest.mark.integration

NO_SWEEP = "600"


async def ready(port: int) -> bool:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/ready") as resp:
        body = await resp.json()
        return resp.status == 200 and bool(body["ready"])


async def done(db: Database, count: int) -> bool:
    return (await statuses(db.dsn)).get("succeeded", 0) == count


async def test_realtime_pickup_without_waiting_for_the_sweep(
        devstack: Devstack, db: Database, conn: asyncpg.Connection) -> None:
    async with running_worker(devstack, SWEEP_INTERVAL_SECONDS=NO_SWEEP) as (worker, port):
        await wait_for(lambda: worker.health.realtime_subscribed, what="subscription")
        assert await ready(port)
        user = await make_user(conn)
        await insert_job(conn, user)
        await wait_for(lambda: done(db, 1), within=5, what="job done")
        assert claimed(worker, "realtime") == 1
        assert claimed(worker, "sweep") == 0


async def test_dropped_events_are_found_by_the_sweep(
        devstack: Devstack, db: Database, conn: asyncpg.Connection) -> None:
    devstack.faults.update({"realtime_drop_fraction": 1.0})
    async with running_worker(devstack, SWEEP_INTERVAL_SECONDS="0.3",
                              MAX_CONCURRENT_JOBS="16") as (worker, _):
        await wait_for(lambda: worker.health.realtime_subscribed, what="subscription")
        user = await make_user(conn)
        for _ in range(10):
            await insert_job(conn, user)
        await wait_for(lambda: done(db, 10), within=10, what="all jobs done")
        assert claimed(worker, "realtime") == 0
        assert claimed(worker, "sweep") == 10
    assert devstack.realtime.events_dropped >= 10


async def test_cut_socket_and_refused_joins_then_catch_up(
        devstack: Devstack, db: Database, conn: asyncpg.Connection) -> None:
    async with running_worker(devstack, SWEEP_INTERVAL_SECONDS=NO_SWEEP) as (worker, port):
        await wait_for(lambda: worker.health.realtime_subscribed, what="subscription")
        devstack.faults.update({"realtime_refuse_joins": True})
        await devstack.realtime.cut_sockets()
        await wait_for(lambda: not worker.health.realtime_subscribed, what="disconnect")
        assert not await ready(port)
        user = await make_user(conn)
        await insert_job(conn, user)  # announced while nobody listens: lost as an event
        devstack.faults.update({"realtime_refuse_joins": False})
        await wait_for(lambda: done(db, 1), within=20, what="catch-up claim")
        assert claimed(worker, "catchup") == 1
        assert claimed(worker, "realtime") == 0
        await wait_for(lambda: ready(port), within=5, what="ready again")


async def test_server_phx_close_is_resubscribed(
        devstack: Devstack, db: Database, conn: asyncpg.Connection) -> None:
    async with running_worker(devstack, SWEEP_INTERVAL_SECONDS=NO_SWEEP) as (worker, _):
        await wait_for(lambda: worker.health.realtime_subscribed, what="subscription")
        await devstack.realtime.close_channels()
        await wait_for(lambda: not worker.health.realtime_subscribed, what="channel closed")
        await wait_for(lambda: worker.health.realtime_subscribed, within=10, what="resubscribed")
        user = await make_user(conn)
        await insert_job(conn, user)
        await wait_for(lambda: done(db, 1), within=5, what="job done")
        assert claimed(worker, "realtime") == 1
        resubscribes = worker.metrics.registry.get_sample_value("worker_realtime_resubscribes_total")
        assert resubscribes is not None and resubscribes >= 1


@asynccontextmanager
async def realtime_down(devstack: Devstack) -> AsyncIterator[None]:
    """Realtime sockets cut and new connections refused, until the block ends."""
    devstack.faults.update({"realtime_refuse_connections": True})
    await devstack.realtime.cut_sockets()
    try:
        yield
    finally:
        devstack.faults.update({"realtime_refuse_connections": False})


async def test_client_that_gave_up_reconnecting_is_rebuilt(
        devstack: Devstack, db: Database, conn: asyncpg.Connection) -> None:
    listener = listener_settings(devstack, client_max_retries=2, rebuild_after_seconds=30.0)
    async with running_worker(devstack, listener=listener, SWEEP_INTERVAL_SECONDS=NO_SWEEP) as (worker, _):
        await wait_for(lambda: worker.health.realtime_subscribed, what="subscription")
        async with realtime_down(devstack):
            await wait_for(lambda: not worker.health.realtime_subscribed, what="disconnect")
            user = await make_user(conn)
            await insert_job(conn, user)
        # rebuild_after is 30 s: coming back sooner proves the supervisor saw the client give up
        await wait_for(lambda: done(db, 1), within=15, what="catch-up after rebuild")
        assert claimed(worker, "catchup") == 1


def resubscribes(worker: Worker) -> float:
    return sample(worker.metrics, "worker_realtime_resubscribes_total")


async def stays_subscribed(worker: Worker, seconds: float, step: float = 0.01) -> bool:
    """Whether the worker stays subscribed, without a single gap, for (at least) ``seconds``."""
    for _ in range(math.ceil(seconds / step)):
        if not worker.health.realtime_subscribed:
            return False
        await anyio.sleep(step)
    return worker.health.realtime_subscribed


async def test_a_rebuilt_session_outlives_the_old_sessions_leave_timeout(
        devstack: Devstack, db: Database, conn: asyncpg.Connection) -> None:
    # Closing a session sends phx_leave and starts its push timeout; the reply never reaches
    # the removed channel, so the timeout reports CLOSED through the old session's callback.
    listener = listener_settings(devstack, client_max_retries=2, client_timeout_seconds=1)
    async with running_worker(devstack, listener=listener, SWEEP_INTERVAL_SECONDS=NO_SWEEP) as (worker, _):
        await wait_for(lambda: worker.health.realtime_subscribed, what="subscription")
        async with realtime_down(devstack):
            await wait_for(lambda: resubscribes(worker) >= 1, what="client gave up: rebuild")
        await wait_for(lambda: worker.health.realtime_subscribed, what="resubscribed")
        rebuilds = resubscribes(worker)
        assert await stays_subscribed(worker, seconds=3 * listener.client_timeout_seconds)
        assert resubscribes(worker) == rebuilds
        await insert_job(conn, await make_user(conn))
        await wait_for(lambda: done(db, 1), within=5, what="job done")
        assert claimed(worker, "realtime") == 1


async def test_poll_only_mode_needs_no_realtime(
        devstack: Devstack, db: Database, conn: asyncpg.Connection) -> None:
    devstack.faults.update({"realtime_refuse_connections": True})
    async with running_worker(devstack, WORKER_MODE="poll",
                              POLL_INTERVAL_SECONDS="0.2") as (worker, port):
        user = await make_user(conn)
        for _ in range(3):
            await insert_job(conn, user)
        await wait_for(lambda: done(db, 3), within=10, what="jobs done by polling")
        assert await ready(port)
        assert claimed(worker, "sweep") == 3
    assert devstack.realtime.connections == 0


async def test_paused_worker_claims_nothing(
        devstack: Devstack, db: Database, conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    await insert_job(conn, user)
    async with running_worker(devstack, PAUSE_WORKER="true",
                              POLL_INTERVAL_SECONDS="0.1", WORKER_MODE="poll") as (worker, port):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                assert resp.status == 200
            async with http.get(f"http://127.0.0.1:{port}/ready") as resp:
                assert (await resp.json())["paused"] is True
        assert worker.dispatcher is None
    assert await statuses(db.dsn) == {"queued": 1}


async def test_subscribed_is_not_ready_until_postgres_subscription(
        devstack: Devstack, db: Database, conn: asyncpg.Connection) -> None:
    await conn.execute("alter publication supabase_realtime drop table public.jobs")
    async with running_worker(devstack, SWEEP_INTERVAL_SECONDS=NO_SWEEP) as (worker, port):
        await wait_for(lambda: devstack.realtime.connections >= 1, what="a socket")
        await wait_for(lambda: _joined_once(devstack), what="a join reply (SUBSCRIBED)")
        assert not worker.health.realtime_subscribed
        assert not await ready(port)
        await conn.execute("alter publication supabase_realtime add table public.jobs")
        await wait_for(lambda: worker.health.realtime_subscribed, within=15, what="subscription")
        user = await make_user(conn)
        await insert_job(conn, user)
        await wait_for(lambda: done(db, 1), within=5, what="job done")
        assert claimed(worker, "realtime") == 1


async def padded_params(conn: asyncpg.Connection, user: object, record_bytes: int) -> dict[str, str]:
    """Params whose job row encodes to ``record_bytes`` of JSON (measured in a rolled-back insert)."""
    params = {"text_prompt": "a big one", "padding": ""}
    tx = conn.transaction()
    await tx.start()
    try:
        size = await conn.fetchval(
            "insert into jobs (user_id, params_json) values ($1, $2::jsonb)"
            " returning octet_length(to_jsonb(jobs)::text)", user, json.dumps(params))
    finally:
        await tx.rollback()
    params["padding"] = "x" * (record_bytes - size)
    return params


def _joined_once(devstack: Devstack) -> bool:
    return devstack.realtime.joined_channels >= 1 or devstack.realtime.connections >= 2


async def test_oversized_frame_closes_the_socket_and_the_job_is_caught_up(
        devstack: Devstack, db: Database, conn: asyncpg.Connection) -> None:
    async with running_worker(devstack, SWEEP_INTERVAL_SECONDS=NO_SWEEP) as (worker, _):
        await wait_for(lambda: worker.health.realtime_subscribed, what="subscription")
        user = await make_user(conn)
        # Under the server's 1 MiB record limit, but the frame around it is over the client's
        # 1 MiB websocket limit: realtime-py's socket closes (1009) and the event is lost.
        big = await padded_params(conn, user, record_bytes=1024 * 1024 - 400)
        await insert_job(conn, user, big)
        await wait_for(lambda: done(db, 1), within=20, what="catch-up of the oversized job")
        assert claimed(worker, "realtime") == 0
        assert claimed(worker, "catchup") == 1
        await wait_for(lambda: worker.health.realtime_subscribed, within=10, what="resubscribed")
        await insert_job(conn, user)
        await wait_for(lambda: done(db, 2), within=5, what="next job by realtime")
        assert claimed(worker, "realtime") == 1


async def test_health_endpoints_speak_json_and_leak_nothing(
        devstack: Devstack, db: Database, conn: asyncpg.Connection) -> None:
    async with running_worker(devstack, SWEEP_INTERVAL_SECONDS=NO_SWEEP) as (worker, port):
        await wait_for(lambda: worker.health.realtime_subscribed, what="subscription")
        user = await make_user(conn)
        await insert_job(conn, user, {"text_prompt": "a secret prompt", "script": {"fail": "permanent"}})
        await wait_for(lambda: _failed(db), within=5, what="job failed")
        bodies = []
        async with aiohttp.ClientSession() as http:
            for path in ("/health", "/ready", "/metrics"):
                async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                    assert resp.status == 200, path
                    bodies.append(await resp.text())
    health_body, ready_body, metrics_body = bodies
    assert health_body.startswith("{") and ready_body.startswith("{")
    for name in ("worker_jobs_claimed_total", "worker_jobs_failed_total", "worker_jobs_in_flight",
                 "worker_pickup_latency_seconds_bucket", "worker_realtime_connected",
                 "worker_realtime_events_total", "worker_last_sweep_timestamp_seconds",
                 "worker_job_duration_seconds_count"):
        assert name in metrics_body, name
    assert 'worker_jobs_failed_total{code="scripted_permanent"} 1.0' in metrics_body
    for body in bodies:
        assert devstack.service_key not in body
        assert devstack.gemini_api_key not in body
        assert "secret prompt" not in body
        assert "Traceback" not in body


async def _failed(db: Database) -> bool:
    return (await statuses(db.dsn)).get("failed", 0) == 1


# --- the Broadcast wake-up source ------------------------------------------------------------------


async def test_broadcast_pickup_without_waiting_for_the_sweep(
        devstack: Devstack, db: Database, conn: asyncpg.Connection) -> None:
    await migrate.apply(conn, wakeup="broadcast")
    async with running_worker(devstack, SWEEP_INTERVAL_SECONDS=NO_SWEEP,
                              WAKEUP_SOURCE="broadcast") as (worker, port):
        await wait_for(lambda: worker.health.realtime_subscribed, what="subscription")
        assert await ready(port)
        await insert_job(conn, await make_user(conn))
        await wait_for(lambda: done(db, 1), within=5, what="job done")
        assert claimed(worker, "realtime") == 1
        assert claimed(worker, "sweep") == 0


async def test_broadcast_listener_replays_what_it_missed_and_ignores_duplicates(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    await migrate.apply(conn, wakeup="broadcast")
    wakes: list[tuple[object, str]] = []
    health = RealtimeLink()
    subject = Listener(listener_settings(devstack, source="broadcast"),
                       lambda job_id, source: wakes.append((job_id, source)), Metrics(), health)
    user = await make_user(conn)
    async with anyio.create_task_group() as tg:
        tg.start_soon(subject.run)
        await wait_for(lambda: health.subscribed, what="subscription")
        seen = await insert_job(conn, user)
        await wait_for(lambda: (seen, "realtime") in wakes, what="live event")
        devstack.faults.update({"realtime_refuse_connections": True})
        await devstack.realtime.cut_sockets()
        await wait_for(lambda: not health.subscribed, what="disconnect")
        missed = await insert_job(conn, user)  # sent while nobody was joined
        devstack.faults.update({"realtime_refuse_connections": False})
        await wait_for(lambda: (missed, "replay") in wakes, within=20, what="the replay")
        tg.cancel_scope.cancel()
    assert [w for w in wakes if w[0] == seen] == [(seen, "realtime")]  # replayed again, ignored
    assert subject.duplicates >= 1
    assert subject.subscriptions >= 2


async def test_broadcast_without_its_migration_stops_the_worker_with_the_fix(devstack: Devstack) -> None:
    stops = pytest.RaisesExc(ConfigError, match="migrate --wakeup broadcast")
    with pytest.RaisesGroup(stops, flatten_subgroups=True):  # from inside the worker's task group
        async with running_worker(devstack, WAKEUP_SOURCE="broadcast"):
            with anyio.fail_after(60):  # until the worker stops by itself (a stop would end start-up)
                await anyio.sleep_forever()


async def metrics_text(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def metric_line(body: str, name: str) -> float:
    [line] = [line for line in body.splitlines() if line.startswith(f"{name} ")]
    return float(line.split()[1])


async def test_metrics_read_the_queue_depth_once_per_scrape_and_never_unscraped(
        devstack: Devstack, db: Database, conn: asyncpg.Connection) -> None:
    async with running_worker(devstack, PAUSE_WORKER="true") as (worker, port):
        user = await make_user(conn, balance=10)
        oldest = await insert_job(conn, user)
        await conn.execute("update jobs set created_at = now() - interval '90 s' where id = $1", oldest)
        await insert_job(conn, user)
        later = await insert_job(conn, user)
        await conn.execute("update jobs set run_after = now() + interval '1 hour' where id = $1", later)
        await anyio.sleep(1)
        assert sample(worker.metrics, "worker_db_requests_total", function="worker_queue_depth") == 0
        body = await metrics_text(port)
        assert metric_line(body, "worker_queue_due_jobs") == 2
        assert 90 <= metric_line(body, "worker_queue_oldest_due_age_seconds") < 150
        await metrics_text(port)
        assert sample(worker.metrics, "worker_db_requests_total", function="worker_queue_depth") == 2
