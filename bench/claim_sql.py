"""What the claim statement itself costs when Postgres has been idle, as in a pickup.

``uv run --group bench python -m bench.claim_sql [claims] [rounds]`` builds a scratch database
(``DATABASE_URL``'s server, else an embedded one) with the worker's migrations; then, in turn
for ``rounds`` rounds, each variant below claims ``claims`` freshly queued jobs by id, each
after a 25 ms pause (the pickup bench's pause between jobs), one asyncpg round trip per claim:

- ``select 1``: the round trip to a backend that sat idle, for scale;
- ``worker_claim_job`` as shipped (migration 0021: plpgsql, its transaction commits without
  waiting for the WAL flush);
- the same function as migration 0002 wrote it (synchronous commit) and as 0001 wrote it
  (``language sql``: planned on every call), each made from that migration's own text under
  another name: 0002 against the shipped one is what asynchronous commit saves.

Prints p50/p95 per variant over all rounds. Not part of ``python -m bench all``; asserts nothing.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from bench.claim_scale import LEASE, make_user, queue_job
from bench.harness import Spread, run_on_scratch_database
from realtime_worker import sql
from realtime_worker_devstack import postgres

PAUSE = 0.025
WARM_UP = 10
COPIES = {"0001": "bench_claim_job_as_sql", "0002": "bench_claim_job_sync_commit"}

Variant = Callable[[asyncpg.Connection, uuid.UUID], Awaitable[int]]


def claim_job_as_in(version: str) -> str:
    """That migration's ``worker_claim_job`` definition, renamed so the versions exist side by side."""
    text = next(m.sql for m in sql.migrations() if m.version == version)
    found = re.search(r"create or replace function public\.worker_claim_job\(.*?\$\$;", text, re.S)
    if found is None:
        raise RuntimeError(f"migration {version} no longer defines worker_claim_job")
    return found.group(0).replace("public.worker_claim_job(", f"public.{COPIES[version]}(", 1)


async def round_trip(conn: asyncpg.Connection, _job: uuid.UUID) -> int:
    return int(await conn.fetchval("select 1"))


def claim_with(function: str) -> Variant:
    statement = f"select id from public.{function}($1, 'bench', $2)"

    async def claim(conn: asyncpg.Connection, job_id: uuid.UUID) -> int:
        return len(await conn.fetch(statement, job_id, LEASE))

    return claim


VARIANTS: dict[str, Variant] = {
    "select 1 (idle round trip)": round_trip,
    "worker_claim_job, async commit (0021, shipped)": claim_with("worker_claim_job"),
    "worker_claim_job, synchronous commit (0002)": claim_with(COPIES["0002"]),
    "worker_claim_job, language sql (0001)": claim_with(COPIES["0001"]),
}


async def timings(conn: asyncpg.Connection, user: uuid.UUID, variant: Variant, count: int) -> list[float]:
    samples = []
    for index in range(WARM_UP + count):
        job_id = await queue_job(conn, user)
        await asyncio.sleep(PAUSE)
        started = time.perf_counter()
        got = await variant(conn, job_id)
        elapsed = time.perf_counter() - started
        if got != 1:
            raise RuntimeError(f"claim {index} returned {got} rows, expected 1")
        if index >= WARM_UP:
            samples.append(elapsed * 1000)
    return samples


async def measure(dsn: str, count: int, rounds: int) -> None:
    setup = await asyncpg.connect(dsn)
    try:
        await postgres.install_schema(setup)
        for version in COPIES:
            await setup.execute(claim_job_as_in(version))
        user = await make_user(setup)
        version = await setup.fetchval("show server_version")
    finally:
        await setup.close()
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, variant in VARIANTS.items():
            conn = await asyncpg.connect(dsn)  # a fresh backend per variant and round
            try:
                samples[name] += await timings(conn, user, variant, count)
            finally:
                await conn.close()
    print(f"Postgres {version}; {rounds} rounds x {count} claims per variant, each after a "
          f"{PAUSE * 1000:.0f} ms pause ({WARM_UP} warm-up claims per round discarded)")
    print(f"{'variant':<48} {'p50 ms':>8} {'p95 ms':>8}")
    for name, values in samples.items():
        spread = Spread.of(values)
        print(f"{name:<48} {spread.p50:>8.3f} {spread.p95:>8.3f}")


def main(count: int, rounds: int) -> None:
    run_on_scratch_database(lambda dsn: measure(dsn, count, rounds))


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    main(args[0] if args else 200, args[1] if len(args) > 1 else 3)
