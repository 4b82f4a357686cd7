"""Worker processes started through the CLI, against the devstack: exactly once, crashes, SIGTERM."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import asyncpg
import pytest
from anyio.abc import Process

from realtime_worker.jobs import worker_of
from realtime_worker_devstack.server import Devstack
from tests.conftest import Database
from tests.helpers import balance, insert_job, job, make_user, refunds
from tests.waiting import wait_for
from tests.workers import ready, spawn_worker, statuses, subprocess_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def calls(log: Path) -> Counter[str]:
    lines = log.read_text().split("\n") if log.exists() else []
    return Counter(line.split()[0] for line in lines if line.strip())


async def stop(process: Process, sig: signal.Signals = signal.SIGTERM) -> int:
    if process.returncode is None:
        process.send_signal(sig)
    with anyio.fail_after(15):
        return await process.wait()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def bulk_insert(conn: asyncpg.Connection, user: object, count: int, params: dict[str, object]) -> None:
    await conn.execute(
        "insert into jobs (user_id, params_json) select $1, $2::jsonb from generate_series(1, $3)",
        user, json.dumps(params), count)


async def test_three_workers_do_every_job_exactly_once(
        devstack: Devstack, db: Database, conn: asyncpg.Connection, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    env = subprocess_env(devstack, SCRIPTED_CALL_LOG=str(log), MAX_CONCURRENT_JOBS="8",
                         SWEEP_INTERVAL_SECONDS="2")
    workers = [await spawn_worker({**env, "WORKER_ID": f"w{i}", "PORT": str(0)},
                                  log=tmp_path / f"w{i}.log") for i in range(3)]
    try:
        user = await make_user(conn, balance=0)
        for _ in range(10):
            await bulk_insert(conn, user, 50, {"script": {"duration": 0.01}})
            await anyio.sleep(0.05)
        await wait_for(lambda: _all_done(db, 500), within=120, step=0.2, what="500 jobs done")
    finally:
        codes = [await stop(w) for w in workers]
    assert codes == [0, 0, 0]
    counted = calls(log)
    assert len(counted) == 500
    assert set(counted.values()) == {1}
    per_worker = Counter(line.split()[1] for line in log.read_text().splitlines())
    assert len(per_worker) >= 2, per_worker


async def _all_done(db: Database, count: int) -> bool:
    return await statuses(db.dsn) == {"succeeded": count}


async def test_kill_9_mid_job_is_finished_by_another_worker(
        devstack: Devstack, db: Database, conn: asyncpg.Connection, tmp_path: Path) -> None:
    env = subprocess_env(devstack, WORKER_MODE="poll", POLL_INTERVAL_SECONDS="0.3")
    user = await make_user(conn, balance=5)
    job_id = await insert_job(conn, user, {"script": {"duration": 2}})
    last_try = await insert_job(conn, user, {"script": {"duration": 30}}, max_attempts=1)
    first = await spawn_worker({**env, "WORKER_ID": "victim"}, log=tmp_path / "victim.log")
    await wait_for(lambda: _running_by(conn, [job_id, last_try], "victim"), within=20,
                   what="both jobs running")
    first.kill()
    await first.wait()
    killed_at = time.monotonic()
    second = await spawn_worker({**env, "WORKER_ID": "rescuer"}, log=tmp_path / "rescuer.log")
    try:
        await wait_for(lambda: _status_is(conn, job_id, "succeeded"), within=30, what="rescue")
        await wait_for(lambda: _status_is(conn, last_try, "failed"), within=30, what="reap")
    finally:
        assert await stop(second) == 0
    recovered = time.monotonic() - killed_at
    rescued = await job(conn, job_id)
    assert rescued["attempts"] == 2 and worker_of(rescued["locked_by"]) == "rescuer"
    assert rescued["locked_by"].startswith("rescuer#")  # the owner of that one claim
    assert recovered >= 3  # not before the 6 s lease could expire (minus time already used)
    failed = await job(conn, last_try)
    assert failed["error_code"] == "lease_expired"
    assert await refunds(conn, last_try) == 1
    assert await balance(conn, user) == 5 - 2 + 1


async def _running_by(conn: asyncpg.Connection, ids: list[object], worker: str) -> bool:
    owners = await conn.fetch(
        "select locked_by from jobs where id = any($1::uuid[]) and status = 'running'", ids)
    return len(owners) == len(ids) and all(worker_of(r["locked_by"]) == worker for r in owners)


async def _status_is(conn: asyncpg.Connection, job_id: object, status: str) -> bool:
    return bool(await conn.fetchval("select status::text = $2 from jobs where id = $1", job_id, status))


async def test_sigterm_releases_unfinished_work_and_exits_0(
        devstack: Devstack, db: Database, conn: asyncpg.Connection, tmp_path: Path) -> None:
    env = subprocess_env(devstack, WORKER_MODE="poll", POLL_INTERVAL_SECONDS="0.3",
                         SHUTDOWN_GRACE_SECONDS="2", WORKER_ID="graceful")
    user = await make_user(conn)
    slow = await insert_job(conn, user, {"script": {"duration": 60}})
    quick = await insert_job(conn, user, {"script": {"duration": 1}})
    worker = await spawn_worker(env, log=tmp_path / "worker.log")
    await wait_for(lambda: _running_by(conn, [slow, quick], "graceful"), within=20, what="running")
    started = time.monotonic()
    code = await stop(worker)
    elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < 10, f"took {elapsed:.1f} s to stop"
    released = await job(conn, slow)
    assert (released["status"], released["attempts"], released["locked_by"]) == ("queued", 0, None)
    assert (await job(conn, quick))["status"] == "succeeded"


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (``SigCgt`` in /proc: one bit a signal)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


async def test_sigterm_during_start_up_exits_0_and_claims_nothing(
        devstack: Devstack, db: Database, conn: asyncpg.Connection, tmp_path: Path) -> None:
    """A platform may stop an instance it has just started, while its imports still take seconds:
    the signal must neither kill it (status -15) nor wait for a whole start-up that claims."""
    env = subprocess_env(devstack, WORKER_MODE="poll", POLL_INTERVAL_SECONDS="0.3",
                         WORKER_ID="early", LOG_LEVEL="INFO")
    user = await make_user(conn)
    queued = await insert_job(conn, user, {"script": {"duration": 0}})
    log = tmp_path / "worker.log"
    worker = await spawn_worker(env, log=log)
    await wait_for(lambda: catches_sigterm(worker.pid), within=30, step=0.001,
                   what="the worker to hold SIGTERM")
    assert await stop(worker) == 0
    assert "stopped during start-up" in log.read_text()
    row = await job(conn, queued)
    assert (row["status"], row["attempts"]) == ("queued", 0)


async def test_once_drains_due_jobs_and_exits(
        devstack: Devstack, db: Database, conn: asyncpg.Connection, tmp_path: Path) -> None:
    user = await make_user(conn)
    for _ in range(5):
        await insert_job(conn, user)
    await insert_job(conn, user, run_after=datetime.now(UTC) + timedelta(hours=1))
    env = subprocess_env(devstack, LOG_LEVEL="INFO")
    with anyio.fail_after(60):
        worker = await spawn_worker(env, "--once", log=tmp_path / "once.log")
        assert await worker.wait() == 0
    assert await statuses(db.dsn) == {"succeeded": 5, "queued": 1}
    with anyio.fail_after(30):
        again = await spawn_worker(env, "--once", log=tmp_path / "again.log")
        assert await again.wait() == 0
    # `run` owns its process: the start-up heap is frozen before the first claim.
    events = [json.loads(line) for line in (tmp_path / "once.log").read_text().splitlines()
              if line.startswith("{")]
    settled = [e for e in events if e["event"] == "heap_settled"]
    assert len(settled) == 1 and settled[0]["frozen_objects"] > 10_000
    assert settled[0]["gc_threshold"][0] == 50_000
    first_claim = next(i for i, e in enumerate(events) if e["event"] == "job_started")
    assert events.index(settled[0]) < first_claim


async def test_burst_of_2000_with_bounded_memory(
        devstack: Devstack, db: Database, conn: asyncpg.Connection, tmp_path: Path) -> None:
    env = subprocess_env(devstack, MAX_CONCURRENT_JOBS="16", SWEEP_INTERVAL_SECONDS="2",
                         WORKER_ID="burst")
    worker = await spawn_worker(env, log=tmp_path / "burst.log")
    peak = 0.0
    try:
        user = await make_user(conn, balance=0)
        await wait_for(lambda: ready(env["PORT"]), within=20, what="worker ready")
        await bulk_insert(conn, user, 2000, {"script": {"duration": 0.02}})
        for _ in range(1200):
            peak = max(peak, rss_mb(worker.pid))
            if await _all_done(db, 2000):
                break
            await anyio.sleep(0.1)
    finally:
        assert await stop(worker) == 0
    assert await statuses(db.dsn) == {"succeeded": 2000}
    print(f"burst of 2000: peak RSS {peak:.0f} MB")
    assert 0 < peak < 400


async def test_sigterm_stops_a_once_run_gracefully(
        devstack: Devstack, db: Database, conn: asyncpg.Connection, tmp_path: Path) -> None:
    env = subprocess_env(devstack, SHUTDOWN_GRACE_SECONDS="1", WORKER_ID="once")
    user = await make_user(conn)
    slow = await insert_job(conn, user, {"script": {"duration": 60}})
    worker = await spawn_worker(env, "--once", log=tmp_path / "once.log")
    await wait_for(lambda: _running_by(conn, [slow], "once"), within=20, what="running")
    started = time.monotonic()
    assert await stop(worker) == 0
    assert time.monotonic() - started < 10
    released = await job(conn, slow)
    assert (released["status"], released["attempts"]) == ("queued", 0)
