"""Claims that take their Gemini grant with them (migration 0014) on a real Postgres, and
BudgetedClaims + BudgetedGenerator through the queue's PostgREST RPC adapter on the devstack."""

from __future__ import annotations

import json
import uuid
from typing import Any

import anyio
import asyncpg
import pytest

from realtime_worker.budget import BudgetedGenerator, BudgetSettings, PrepaidGrants, SupabaseBudget
from realtime_worker.budget_claims import BudgetedClaims
from realtime_worker.generator import GeneratedImage, GenerationRequest
from realtime_worker.pipeline import open_pipeline
from realtime_worker.queue import SupabaseQueue
from realtime_worker.rpc import open_rpc
from realtime_worker.worker import Worker
from realtime_worker_devstack.server import Devstack
from tests.conftest import Database
from tests.helpers import insert_job, make_user
from tests.waiting import wait_for
from tests.workers import claimed, settings, statuses

pytestmark = pytest.mark.integration

MODEL = "gemini-test-image"
CLAIM = "select worker_claim_jobs_within_budget($1, $2, 30, $3, $4, $5, $6, $7, 120)"


async def claim(conn: asyncpg.Connection, limit: int, *, rpm: float = 60, concurrent: int = 100,
                ahead: float = 2.0, job_id: uuid.UUID | None = None) -> dict[str, Any]:
    raw = await conn.fetchval(CLAIM, "w1", limit, job_id, MODEL, rpm, concurrent, ahead)
    answer: dict[str, Any] = json.loads(raw)
    return answer


async def queue_jobs(conn: asyncpg.Connection, count: int) -> list[uuid.UUID]:
    user = await make_user(conn, count)
    return [await insert_job(conn, user) for _ in range(count)]


async def grant_starts(conn: asyncpg.Connection) -> list[float]:
    rows = await conn.fetch("select extract(epoch from starts_at - now()) as s"
                            " from realtime_worker.gemini_grants order by starts_at")
    return [float(r["s"]) for r in rows]


async def test_claims_only_what_the_budget_can_start_within_the_horizon(
        conn: asyncpg.Connection) -> None:
    await queue_jobs(conn, 10)
    first = await claim(conn, 10, rpm=60, ahead=2.0)  # one a second: turns at 0, 1 and 2 s
    assert len(first["jobs"]) == 3 and len(first["grants"]) == 3
    assert {g["job"] for g in first["grants"]} == {j["id"] for j in first["jobs"]}
    assert [round(g["wait_seconds"]) for g in first["grants"]] == [0, 1, 2]
    assert 0.5 < first["wait_seconds"] <= 1.0  # the fourth turn (3 s) is within 2 s in 1 s
    assert [round(s) for s in await grant_starts(conn)] == [0, 1, 2]
    second = await claim(conn, 10, rpm=60, ahead=2.0)
    assert second["jobs"] == [] and 0.5 < second["wait_seconds"] <= 1.0
    assert await conn.fetchval("select count(*) from public.jobs where status = 'running'") == 3


async def test_the_concurrency_limits_a_claim_and_a_released_grant_makes_room(
        conn: asyncpg.Connection) -> None:
    await queue_jobs(conn, 5)
    first = await claim(conn, 5, rpm=60_000, concurrent=2)
    assert len(first["jobs"]) == 2 and first["wait_seconds"] == 1.0
    refused = await claim(conn, 5, rpm=60_000, concurrent=2)
    assert refused["jobs"] == [] and refused["wait_seconds"] == 1.0
    await conn.fetchval("select worker_gemini_release($1::uuid, 'ok', null)", first["grants"][0]["grant"])
    assert len((await claim(conn, 5, rpm=60_000, concurrent=2))["jobs"]) == 1


async def test_nothing_due_takes_no_grant_and_asks_for_no_wake_up(conn: asyncpg.Connection) -> None:
    idle = await claim(conn, 4)
    assert idle == {"jobs": [], "grants": [], "wait_seconds": None}
    assert await conn.fetchval("select count(*) from realtime_worker.gemini_grants") == 0
    tat = await conn.fetchval("select tat <= now() from realtime_worker.gemini_budget")
    assert tat  # no turn was spent
    await conn.execute("update realtime_worker.gemini_budget set tat = now() + interval '10 s'")
    full = await claim(conn, 1)  # no room for 10 s, but nothing due either: no wake-up asked for
    assert full == {"jobs": [], "grants": [], "wait_seconds": None}
    await queue_jobs(conn, 1)
    waits = await claim(conn, 1)  # now a job is due: come back when the budget has room
    assert waits["jobs"] == [] and 7.5 < waits["wait_seconds"] <= 8.0


async def test_a_realtime_claim_by_id_takes_that_job_with_a_grant(conn: asyncpg.Connection) -> None:
    jobs = await queue_jobs(conn, 3)
    answer = await claim(conn, 1, job_id=jobs[2])
    assert [j["id"] for j in answer["jobs"]] == [str(jobs[2])]
    assert [g["job"] for g in answer["grants"]] == [str(jobs[2])]
    assert answer["wait_seconds"] is None
    again = await claim(conn, 1, job_id=jobs[2])  # running now: nothing, no grant
    assert again["jobs"] == [] and again["wait_seconds"] is None
    assert await conn.fetchval("select count(*) from realtime_worker.gemini_grants") == 1


async def test_a_burst_does_not_hold_the_turns_of_a_user_who_comes_later(
        conn: asyncpg.Connection) -> None:
    """A burst from one user, then one job of another: the next claim with room takes the
    newcomer's job, and no job of the burst holds a turn beyond the horizon."""
    burst = await queue_jobs(conn, 20)
    claimed = await claim(conn, 20, rpm=60, ahead=1.0)
    assert len(claimed["jobs"]) == 2  # turns at 0 and 1 s; 18 stay queued, holding nothing
    [late] = await queue_jobs(conn, 1)
    await conn.execute("update realtime_worker.gemini_budget set tat = now()")  # the turns came
    nxt = await claim(conn, 1, rpm=60, ahead=1.0)
    assert [j["id"] for j in nxt["jobs"]] == [str(late)]
    assert await conn.fetchval("select count(*) from public.jobs where status = 'queued'"
                               " and id = any($1::uuid[])", burst) == 18


class ScriptedGemini:
    def __init__(self) -> None:
        self.calls = 0

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        self.calls += 1
        return GeneratedImage(b"png", "image/png", MODEL, 1, 1, 0.01)

    async def aclose(self) -> None:
        pass


async def test_the_adapter_hands_the_grant_to_the_job_and_frees_one_never_used(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    used, unused = await queue_jobs(conn, 2)
    settings = BudgetSettings(model=MODEL, rpm=60, max_concurrent=4)
    woken: list[float] = []
    async with open_rpc(devstack.url, devstack.service_key) as raw:
        queue = SupabaseQueue(raw)
        budget, prepaid = SupabaseBudget(queue.call), PrepaidGrants()
        claims = BudgetedClaims(queue, budget, settings, 2.0, prepaid)
        claims.on_room = woken.append
        inner = ScriptedGemini()  # built first, as the worker does: it shares the empty registry
        generator = BudgetedGenerator(inner, budget, settings, "w1", prepaid)
        first = await claims.claim_job(used, "w1", 30)
        assert first is not None and first.id == used and len(prepaid) == 1
        await generator.generate(GenerationRequest(text="a fox", system_instruction="x",
                                                   job_id=used))
        assert inner.calls == 1 and len(prepaid) == 0
        # The request went on the claim's grant: no second turn was taken (one turn = 1 s).
        ahead = await conn.fetchval(
            "select extract(epoch from tat - now()) from realtime_worker.gemini_budget")
        assert 0 < ahead <= 1.0
        second = await claims.claim_jobs("w1", 4, 30)
        assert [j.id for j in second] == [unused] and woken == []  # the queue had no more
        assert await conn.fetchval("select count(*) from realtime_worker.gemini_grants") == 1
        assert await claims.fail(unused, second[0].locked_by or "", "bad photo", "invalid_input",
                                 None) == "failed"
        assert await conn.fetchval("select count(*) from realtime_worker.gemini_grants") == 0
        assert len(prepaid) == 0


async def test_the_adapter_asks_to_be_woken_when_the_budget_held_a_claim_back(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    await queue_jobs(conn, 4)
    settings = BudgetSettings(model=MODEL, rpm=30, max_concurrent=4)  # one turn every 2 s
    woken: list[float] = []
    async with open_rpc(devstack.url, devstack.service_key) as raw:
        queue = SupabaseQueue(raw)
        claims = BudgetedClaims(queue, SupabaseBudget(queue.call), settings, 0.5, PrepaidGrants())
        claims.on_room = woken.append
        assert len(await claims.claim_jobs("w1", 4, 30)) == 1
        assert len(woken) == 1 and 1.0 < woken[0] <= 1.5  # turn at 2 s, within 0.5 s at 1.5 s


async def test_once_waits_for_the_budget_and_drains_every_due_job(
        devstack: Devstack, db: Database, conn: asyncpg.Connection) -> None:
    """``--once`` with the fleet's budget: a claim the budget holds back is due all the same, so
    the run waits for the room instead of ending with due jobs still queued. The real pipeline
    (fake Gemini): each job uses its grant, so its turn is spent."""
    await queue_jobs(conn, 3)
    worker = Worker(settings(devstack, GEMINI_RPM="30", MAX_CONCURRENT_JOBS="3", IMAGE_THREADS="1"),
                    open_pipeline)
    with anyio.fail_after(30):
        await worker.run(once=True, host="127.0.0.1", install_signals=False)
    assert await statuses(db.dsn) == {"succeeded": 3}
    # One turn every 2 s: each claim took the one job whose turn was near, then the run waited.
    assert claimed(worker, "once") == 3
    starts = await conn.fetchval("select extract(epoch from max(started_at) - min(started_at))"
                                 " from public.jobs")
    assert starts >= 3.0


async def test_a_stop_ends_a_once_run_that_waits_for_the_budget(
        devstack: Devstack, db: Database, conn: asyncpg.Connection) -> None:
    await queue_jobs(conn, 3)
    worker = Worker(settings(devstack, GEMINI_RPM="3", IMAGE_THREADS="1"),  # a turn every 20 s
                    open_pipeline)
    ended = anyio.Event()

    async def once() -> None:
        await worker.run(once=True, host="127.0.0.1", install_signals=False)
        ended.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(once)
        await wait_for(lambda: _succeeded(db, 1), within=20, what="the first job")
        worker.request_stop()
        with anyio.fail_after(5):  # not the ~20 s until the budget's next turn
            await ended.wait()
    assert await statuses(db.dsn) == {"succeeded": 1, "queued": 2}


async def _succeeded(db: Database, count: int) -> bool:
    return (await statuses(db.dsn)).get("succeeded", 0) == count
