"""A worker whose Gemini configuration is refused pauses instead of failing the queue.

The real worker (health server, Realtime listener, sweeper, dispatcher) runs the real pipeline
against the devstack, whose fake Gemini answers 403 PERMISSION_DENIED (a key whose project may
not use the API) until the test lifts the fault.
"""

from __future__ import annotations

import functools
from typing import Any

import aiohttp
import anyio
import asyncpg
import pytest

from realtime_worker.pipeline import open_pipeline
from realtime_worker.worker import Worker
from realtime_worker_devstack.server import Devstack
from tests.conftest import Database
from tests.helpers import balance, insert_job, make_user, sample
from tests.waiting import wait_for
from tests.workers import claimed, listener_settings, settings, statuses

pytestmark = [
    pytest.mark.integration,
    # google-genai subclasses aiohttp.ClientSession for every session it opens.
    pytest.mark.filterwarnings("ignore:Inheritance class Aiohttp:DeprecationWarning"),
]

MODEL = "gemini-3.1-flash-lite-image"
COOL_DOWN = 3.0  # long enough to look at the paused worker, short enough to wait out
REFUNDS = "select count(*) from public.credit_events where job_id is not null"  # not sign-up rows


async def get_ready(port: int) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/ready") as resp:
        return resp.status, await resp.json()


def claim_requests(worker: Worker) -> float:
    return sum(sample(worker.metrics, "worker_db_requests_total", function=f)
               for f in ("worker_claim_job", "worker_claim_jobs"))


async def job_rows(conn: asyncpg.Connection, user: Any) -> list[asyncpg.Record]:
    return list(await conn.fetch("select status::text, attempts, error, error_code from public.jobs"
                                 " where user_id = $1", user))


async def test_a_refused_key_pauses_claiming_and_the_queue_waits_for_the_fix(
        devstack: Devstack, db: Database, conn: asyncpg.Connection) -> None:
    devstack.faults.update({"gemini_status": 403})
    user = await make_user(conn, 10)
    for subject in ("a cat", "a dog", "a fox"):
        await insert_job(conn, user, {"text_prompt": subject})
    worker = Worker(settings(devstack, GEMINI_MODEL=MODEL, MAX_CONCURRENT_JOBS="2",
                             SWEEP_INTERVAL_SECONDS="0.2", IMAGE_THREADS="1",
                             GEMINI_TIMEOUT_SECONDS="10", CONFIG_PAUSE_SECONDS=f"{COOL_DOWN:g}"),
                    open_pipeline, listener=listener_settings(devstack))
    async with anyio.create_task_group() as tg:
        port = await tg.start(functools.partial(worker.run, host="127.0.0.1", install_signals=False))
        try:
            await wait_for(lambda: sample(worker.metrics, "worker_config_pauses_total",
                                          code="gemini_auth") == 1, what="the pause")
            await wait_for(lambda: worker.dispatcher is not None and worker.dispatcher.in_flight == 0)

            # Paused: not ready, and why; sweeps come and go without a claim.
            status, body = await get_ready(port)
            assert status == 503 and body["ready"] is False and body["paused"] is False
            assert body["checks"]["gemini_config"] is False
            assert body["config_pause"]["error_code"] == "gemini_auth"
            assert 0 < body["config_pause"]["resumes_in_seconds"] <= COOL_DOWN
            last_sweep = "worker_last_sweep_timestamp_seconds"
            claims, sweeps = claim_requests(worker), sample(worker.metrics, last_sweep)
            await wait_for(lambda: sample(worker.metrics, last_sweep) > sweeps + 0.3,
                           what="two more sweeps")
            assert worker.dispatcher is not None and worker.dispatcher.pause_status() is not None
            assert claim_requests(worker) == claims

            # Every job waits in the queue as if never tried: no failure, no refund.
            assert await statuses(db.dsn) == {"queued": 3}
            assert [tuple(r) for r in await job_rows(conn, user)] == [("queued", 0, None, None)] * 3
            assert await conn.fetchval(REFUNDS) == 0
            assert await balance(conn, user) == 7

            # The key is fixed: after the cool-down the worker claims again by itself.
            devstack.faults.update({"gemini_status": None})
            await wait_for(lambda: _succeeded(db, 3), within=COOL_DOWN + 20, what="jobs done")
            assert [r["attempts"] for r in await job_rows(conn, user)] == [1, 1, 1]
            assert await conn.fetchval(REFUNDS) == 0
            assert await balance(conn, user) == 7
            # The dispatcher's own wake-up at the end of the pause, or a sweep that came first.
            assert claimed(worker, "resume") + claimed(worker, "sweep") >= 1
            assert sample(worker.metrics, "worker_jobs_failed_total", code="gemini_auth") == 0
            await wait_for(lambda: _ready(port), within=5, what="ready again")
        finally:
            worker.request_stop()


async def _succeeded(db: Database, count: int) -> bool:
    return (await statuses(db.dsn)).get("succeeded", 0) == count


async def _ready(port: int) -> bool:
    status, body = await get_ready(port)
    return status == 200 and body["config_pause"] is None
