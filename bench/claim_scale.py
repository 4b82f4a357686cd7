"""Claim latency with 1k vs 1M finished jobs in the table (target: within 2x).

``uv run python -m bench.claim_scale [claims]`` builds a scratch database (on the server in
``DATABASE_URL``, else an embedded Postgres from ``pgserver``) with the Supabase base, the app's
schema and the worker's migration; then, with 1,000 and again with 1,000,000 finished jobs in
``public.jobs``, it times ``worker_claim_job`` (a fresh queued job, by id) and
``worker_claim_jobs`` (limit 1), one asyncpg round trip each, and prints p50/p95/p99 side by
side. The scratch database is dropped at the end.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from bench.harness import Spread, run_on_scratch_database
from realtime_worker_devstack import postgres, users

SMALL, LARGE = 1_000, 1_000_000
WARM_UP = 20
LEASE = 60
Claim = Callable[[asyncpg.Connection, uuid.UUID], Awaitable[int]]


async def make_user(conn: asyncpg.Connection) -> uuid.UUID:
    return await users.create(conn, 1_000_000)


async def add_finished_jobs(conn: asyncpg.Connection, user: uuid.UUID, first: int, last: int, *,
                            vacuum: bool = True) -> None:
    """Succeeded and failed jobs numbered ``first..last`` in one statement (ordered ids keep the
    primary key cheap), then ``vacuum analyze`` (``analyze`` alone with ``vacuum=False``).

    The rows are history, loaded as a restore would load them: with the table's triggers off
    (``session_replication_role = replica``, a superuser's setting), which halves the time. The
    triggers stamp ``updated_at`` and guard writes of the worker's columns by signed-in users;
    neither changes what a claim's plan reads."""
    async with conn.transaction():
        await conn.execute("set local session_replication_role = replica")
        await _insert_finished(conn, user, first, last)
    await conn.execute("vacuum analyze public.jobs" if vacuum else "analyze public.jobs")


async def _insert_finished(conn: asyncpg.Connection, user: uuid.UUID, first: int, last: int) -> None:
    await conn.execute("""
        insert into public.jobs (id, user_id, status, params_json, created_at, started_at,
                                 ended_at, attempts, model, cost_cents)
        select lpad(to_hex(i), 32, '0')::uuid, $1,
               (case when i % 10 = 0 then 'failed' else 'succeeded' end)::job_status,
               '{"text_prompt": "a cat"}', t, t, t + interval '20 s', 1, 'm', 4
        from generate_series($2::int, $3::int) as i,
             lateral (select now() - interval '400 days' + i * interval '30 s') as s(t)""",
        user, first, last)


async def queue_job(conn: asyncpg.Connection, user: uuid.UUID) -> uuid.UUID:
    job_id: uuid.UUID = await conn.fetchval(
        "insert into public.jobs (user_id, params_json) values ($1, '{}') returning id", user)
    return job_id


async def claim_by_id(conn: asyncpg.Connection, job_id: uuid.UUID) -> int:
    rows = await conn.fetch("select id from worker_claim_job($1, 'bench', $2)", job_id, LEASE)
    return len(rows)


async def claim_oldest(conn: asyncpg.Connection, job_id: uuid.UUID) -> int:
    rows = await conn.fetch("select id from worker_claim_jobs('bench', 1, $1)", LEASE)
    return len(rows)


CLAIMS: dict[str, Claim] = {
    "worker_claim_job": claim_by_id,
    "worker_claim_jobs(limit 1)": claim_oldest,
}


async def time_claims(conn: asyncpg.Connection, user: uuid.UUID, claim: Claim, count: int) -> list[float]:
    """Milliseconds per claim; each claims one freshly queued job, which is then finished."""
    timings = []
    for index in range(WARM_UP + count):
        job_id = await queue_job(conn, user)
        start = time.perf_counter()
        claimed = await claim(conn, job_id)
        elapsed = time.perf_counter() - start
        if claimed != 1:
            raise RuntimeError(f"claim {index} took {claimed} jobs, expected 1")
        await conn.execute("update public.jobs set status = 'succeeded', ended_at = now() "
                           "where id = $1", job_id)
        if index >= WARM_UP:
            timings.append(elapsed * 1000)
    return timings


async def measure(conn: asyncpg.Connection, user: uuid.UUID, count: int) -> dict[str, tuple[float, ...]]:
    return {name: Spread.of(await time_claims(conn, user, claim, count)).percentiles
            for name, claim in CLAIMS.items()}


def report(small: dict[str, tuple[float, ...]], large: dict[str, tuple[float, ...]]) -> None:
    head = f"{'p50':>7} {'p95':>7} {'p99':>7}"
    print(f"{'':<28} {'1k finished jobs (ms)':^23}   {'1M finished jobs (ms)':^23}   "
          f"{'ratio 1M/1k':^20}")
    print(f"{'claim':<28} {head}   {head}   {'p50':>6} {'p95':>6} {'p99':>6}")
    for name in CLAIMS:
        a, b = small[name], large[name]
        ratios = " ".join(f"{y / x:>5.2f}x" for x, y in zip(a, b, strict=True))
        print(f"{name:<28} {a[0]:>7.3f} {a[1]:>7.3f} {a[2]:>7.3f}   "
              f"{b[0]:>7.3f} {b[1]:>7.3f} {b[2]:>7.3f}   {ratios}")
    worst = max(large[n][0] / small[n][0] for n in CLAIMS)
    verdict = "within" if worst <= 2 else "NOT within"
    print(f"target: p50 at 1M within 2x of p50 at 1k -> worst p50 ratio {worst:.2f}x ({verdict})")


BACKLOG_USERS, BACKLOG_BURST = 50, 1_000


async def time_backlog_claims(conn: asyncpg.Connection, count: int) -> tuple[float, ...]:
    """worker_claim_jobs(limit 1) with a backlog: one user's burst of BACKLOG_BURST queued jobs
    and one queued job each of BACKLOG_USERS - 1 others (the turns between users read every
    user's head). Each claim takes one job of the backlog, which is then finished."""
    users = [await make_user(conn) for _ in range(BACKLOG_USERS)]
    for n in range(BACKLOG_BURST):
        await queue_job(conn, users[0])
        if n < BACKLOG_USERS - 1:
            await queue_job(conn, users[n + 1])
    await conn.execute("analyze public.jobs")
    timings = []
    for index in range(WARM_UP + count):
        start = time.perf_counter()
        claimed = await conn.fetchval("select id from worker_claim_jobs('bench', 1, $1)", LEASE)
        elapsed = time.perf_counter() - start
        await conn.execute("update public.jobs set status = 'succeeded', ended_at = now() "
                           "where id = $1", claimed)
        if index >= WARM_UP:
            timings.append(elapsed * 1000)
    return Spread.of(timings).percentiles


async def run(dsn: str, count: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await postgres.install_schema(conn)
        version = await conn.fetchval("show server_version")
        user = await make_user(conn)
        await add_finished_jobs(conn, user, 1, SMALL)
        small = await measure(conn, user, count)
        started = time.perf_counter()
        await add_finished_jobs(conn, user, SMALL + 1, LARGE)
        filled = time.perf_counter() - started
        large = await measure(conn, user, count)
        backlog = await time_backlog_claims(conn, count)
    finally:
        await conn.close()
    print(f"Postgres {version}; {count} claims per function and size, one asyncpg connection, "
          f"{WARM_UP} warm-up claims discarded; adding {LARGE - SMALL:,} finished jobs took "
          f"{filled:.1f} s")
    report(small, large)
    print(f"worker_claim_jobs(limit 1), 1M finished and a backlog of {BACKLOG_BURST + BACKLOG_USERS - 1:,}"
          f" queued jobs of {BACKLOG_USERS} users: p50 {backlog[0]:.3f}, p95 {backlog[1]:.3f},"
          f" p99 {backlog[2]:.3f} ms")


def main(count: int) -> None:
    run_on_scratch_database(lambda dsn: run(dsn, count))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
