"""The fleet's Gemini budget (migration 0011) on a real Postgres: limits held by concurrent
acquirers, AIMD, leases; and BudgetedGenerator through the queue's PostgREST RPC adapter."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import anyio
import asyncpg
import pytest

from realtime_worker.budget import Answer, BudgetedGenerator, BudgetSettings, SupabaseBudget
from realtime_worker.errors import PermanentJobError, QuotaJobError
from realtime_worker.generator import GeneratedImage, GenerationRequest
from realtime_worker.queue import SupabaseQueue
from realtime_worker.rpc import open_rpc
from realtime_worker_devstack.server import Devstack
from tests.conftest import Database

pytestmark = pytest.mark.integration

MODEL = "gemini-test-image"
ACQUIRE = "select worker_gemini_acquire($1, $2, $3, $4, $5, $6)"
RELEASE = "select worker_gemini_release($1::uuid, $2, $3)"


async def acquire(conn: asyncpg.Connection, *, rpm: float = 60, concurrent: int = 4,
                  max_wait: float = 60, lease: int = 120, worker: str = "w") -> Answer:
    raw = await conn.fetchval(ACQUIRE, MODEL, worker, rpm, concurrent, max_wait, lease)
    return Answer.from_json(json.loads(raw))


async def release(conn: asyncpg.Connection, grant: str | None, outcome: str,
                  retry: float | None = None) -> float | None:
    rate: float | None = await conn.fetchval(RELEASE, grant, outcome, retry)
    return rate


async def rate_of(conn: asyncpg.Connection) -> float:
    rate: float = await conn.fetchval(
        "select rate_rpm from realtime_worker.gemini_budget where model = $1", MODEL)
    return rate


async def test_three_concurrent_acquirers_never_exceed_the_concurrency(db: Database) -> None:
    conns = [await asyncpg.connect(db.dsn) for _ in range(3)]
    in_flight, peak, granted = 0, 0, 0

    async def worker(conn: asyncpg.Connection, name: str) -> None:
        nonlocal in_flight, peak, granted
        for _ in range(15):
            answer = await acquire(conn, rpm=60_000, concurrent=2, worker=name)
            if not answer.granted:
                assert answer.reason == "concurrency"
                await asyncio.sleep(0.01)
                continue
            in_flight += 1
            peak, granted = max(peak, in_flight), granted + 1
            await asyncio.sleep(0.02)
            in_flight -= 1
            assert await release(conn, answer.grant, "ok") is not None

    try:
        await asyncio.gather(*(worker(c, f"w{i}") for i, c in enumerate(conns)))
    finally:
        for conn in conns:
            await conn.close()
    assert peak == 2  # reached, never passed
    assert granted >= 10


async def test_three_concurrent_acquirers_are_spaced_by_the_rate(db: Database) -> None:
    conns = [await asyncpg.connect(db.dsn) for _ in range(3)]

    async def four(conn: asyncpg.Connection, name: str) -> list[Answer]:
        return [await acquire(conn, rpm=600, concurrent=100, worker=name) for _ in range(4)]

    try:
        answers = [a for found in await asyncio.gather(
            *(four(c, f"w{i}") for i, c in enumerate(conns))) for a in found]
        starts = [r["starts_at"] for r in await conns[0].fetch(
            "select starts_at from realtime_worker.gemini_grants order by starts_at")]
    finally:
        for conn in conns:
            await conn.close()
    assert all(a.granted for a in answers) and len(starts) == 12
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.1 - 1e-6  # 600 a minute: one every 0.1 s, fleet-wide
    assert (starts[-1] - starts[0]).total_seconds() >= 1.1 - 1e-6  # the twelfth waits its turn


async def test_a_turn_beyond_the_wait_takes_no_grant(conn: asyncpg.Connection) -> None:
    first = await acquire(conn, rpm=6, max_wait=5)  # one every 10 s
    assert first.granted and first.wait_seconds == 0
    second = await acquire(conn, rpm=6, max_wait=5)
    assert (second.granted, second.reason) == (False, "rate")
    assert 9 < second.wait_seconds <= 10
    assert await conn.fetchval("select count(*) from realtime_worker.gemini_grants") == 1


async def test_a_grant_never_used_gives_its_turn_back(conn: asyncpg.Connection) -> None:
    """A job that failed before its Gemini request (bad input) made no request: its turn in the
    rate comes back, so a run of such jobs does not hold the budget from everyone else (0016)."""
    grants = [await acquire(conn, rpm=6) for _ in range(3)]  # turns at 0, 10 and 20 s
    assert [round(g.wait_seconds) for g in grants] == [0, 10, 20]
    assert await release(conn, grants[2].grant, "unused") == 6
    assert await release(conn, grants[1].grant, "unused") == 6
    assert round((await acquire(conn, rpm=6)).wait_seconds) == 10  # not 30
    # Only the last turn goes back: an earlier one is a hole the rate cannot reuse (a request
    # in it would make two within one interval of the grant now at 10 s).
    assert await release(conn, grants[0].grant, "unused") == 6
    tat = await conn.fetchval("select extract(epoch from tat - now()) from realtime_worker.gemini_budget")
    assert 19 < tat <= 20
    # Nor after a 429 moved the schedule: the hold stands.
    held = await acquire(conn, rpm=6)
    assert await release(conn, held.grant, "rate_limited", 60) == 3
    assert await release(conn, (await acquire(conn, rpm=6, max_wait=120)).grant, "unused") == 3
    waits = await acquire(conn, rpm=6, max_wait=120)
    assert 59 < waits.wait_seconds <= 60


async def test_a_429_halves_the_rate_once_and_holds_everyone_back(conn: asyncpg.Connection) -> None:
    grants = [await acquire(conn, rpm=6000) for _ in range(2)]
    assert await release(conn, grants[0].grant, "rate_limited", 7) == 3000
    assert await release(conn, grants[1].grant, "rate_limited", 7) == 3000  # same hold: once
    held = await acquire(conn, rpm=6000, max_wait=3)
    assert (held.granted, held.reason) == (False, "rate")
    assert 6 < held.wait_seconds <= 7
    waits = await acquire(conn, rpm=6000, max_wait=30)
    assert waits.granted and 6 < waits.wait_seconds <= 7


async def test_successes_raise_the_rate_additively_up_to_the_ceiling(conn: asyncpg.Connection) -> None:
    first = await acquire(conn, rpm=60)
    assert await release(conn, first.grant, "rate_limited", 0) == 30
    rates = []
    for _ in range(12):
        answer = await acquire(conn, rpm=60)
        assert answer.granted
        rates.append(await release(conn, answer.grant, "ok"))
    assert rates[:3] == [33, 36, 39]
    assert rates[-3:] == [60, 60, 60]
    other = await acquire(conn, rpm=60)
    assert await release(conn, other.grant, "error") == 60  # other errors change nothing
    assert await release(conn, other.grant, "ok") is None  # released once


async def test_a_lower_ceiling_applies_at_once_and_a_dead_grant_expires(conn: asyncpg.Connection) -> None:
    await acquire(conn, rpm=600, concurrent=1, lease=1)
    assert await rate_of(conn) == 600
    refused = await acquire(conn, rpm=300, concurrent=1, lease=1)
    assert (refused.granted, refused.reason) == (False, "concurrency")
    assert await rate_of(conn) == 300
    await conn.execute("update realtime_worker.gemini_grants set expires_at = now() - interval '1 s'")
    assert (await acquire(conn, rpm=300, concurrent=1)).granted


async def test_only_the_service_role_may_use_the_budget(conn: asyncpg.Connection) -> None:
    for role in ("anon", "authenticated"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute(f"set local role {role}")
                await conn.fetchval(ACQUIRE, MODEL, "w", 60, 1, 1, 1)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute(f"set local role {role}")
                await conn.fetch("select * from realtime_worker.gemini_budget")


# --- BudgetedGenerator through PostgREST --------------------------------------------------------


class ScriptedGemini:
    """The inner generator: answers, or raises, what it is told; counts calls."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error, self.calls = error, 0

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return GeneratedImage(b"png", "image/png", MODEL, 1, 1, 0.01)

    async def aclose(self) -> None:
        pass


REQUEST = GenerationRequest(text="a fox", system_instruction="line art")


def budgeted(rpc: Any, inner: ScriptedGemini, *, rpm: float = 6000,
             wait: float = 2) -> BudgetedGenerator:
    settings = BudgetSettings(model=MODEL, rpm=rpm, max_concurrent=2, max_wait_seconds=wait)
    return BudgetedGenerator(inner, SupabaseBudget(rpc), settings, "w1")


async def test_a_429_through_the_adapter_defers_the_next_job_for_the_hold(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    async with open_rpc(devstack.url, devstack.service_key) as raw:
        rpc = SupabaseQueue(raw).call
        ok = ScriptedGemini()
        assert (await budgeted(rpc, ok).generate(REQUEST)).data == b"png"
        limited = QuotaJobError("Gemini is rate limiting us", code="rate_limited", retry_after=20)
        with pytest.raises(QuotaJobError):
            await budgeted(rpc, ScriptedGemini(limited)).generate(REQUEST)
        assert await rate_of(conn) == 3000
        waiting = ScriptedGemini()
        with anyio.fail_after(10), pytest.raises(QuotaJobError) as deferred:
            await budgeted(rpc, waiting).generate(REQUEST)
        assert waiting.calls == 0  # Gemini was not asked
        assert deferred.value.retry_after is not None and 18 < deferred.value.retry_after <= 20
        refused = ScriptedGemini(PermanentJobError("refused", code="content_refused"))
        await conn.execute("update realtime_worker.gemini_budget set hold_until = now(), tat = now()")
        with pytest.raises(PermanentJobError):
            await budgeted(rpc, refused).generate(REQUEST)
        assert await conn.fetchval("select count(*) from realtime_worker.gemini_grants") == 0


async def test_a_run_cancelled_while_waiting_for_its_turn_frees_its_grant(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    async with open_rpc(devstack.url, devstack.service_key) as raw:
        rpc = SupabaseQueue(raw).call
        await budgeted(rpc, ScriptedGemini(), rpm=12, wait=10).generate(REQUEST)  # next in 5 s
        waiting = ScriptedGemini()
        with anyio.move_on_after(1):
            await budgeted(rpc, waiting, rpm=12, wait=10).generate(REQUEST)
        assert waiting.calls == 0
        assert await conn.fetchval("select count(*) from realtime_worker.gemini_grants") == 0
