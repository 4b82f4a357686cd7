"""Throughput and per-job overhead with a zero-latency generator.

For ``MAX_CONCURRENT_JOBS`` 1, 4 and 16, a realtime-mode worker subprocess gets a burst of jobs
committed in one transaction, with (a) the real pipeline against the devstack's fake Gemini with
no injected delay (it still draws its page, in the devstack process) and (b) the scripted
processor with ``duration`` 0. Figures come from the database's own clock: jobs/s is the number
of jobs over the time from their ``created_at`` (the insert) to the last ``ended_at``; the time a
job spends in the worker is ``ended_at - started_at`` (claim transaction → completion
transaction); the generation time is the worker's ``worker_generation_seconds`` histogram.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import asyncpg

from bench import harness
from bench.context import Context
from bench.report import Section

NAME = "throughput"
LEVELS = (1, 4, 16)


@dataclass(frozen=True)
class Load:
    label: str
    processor: str
    params: str
    jobs: int


@dataclass(frozen=True)
class Outcome:
    load: Load
    concurrency: int
    jobs_per_second: float
    in_worker_p50_ms: float
    in_worker_mean_ms: float
    generation_mean_ms: float
    failed: int

    @property
    def outside_generation_ms(self) -> float:
        return self.in_worker_mean_ms - self.generation_mean_ms


SUMMARY = """
    select count(*) filter (where status = 'succeeded') as succeeded,
           count(*) filter (where status = 'failed') as failed,
           extract(epoch from max(ended_at) - min(created_at)) as span,
           percentile_cont(0.5) within group (order by extract(epoch from ended_at - started_at)) as p50,
           avg(extract(epoch from ended_at - started_at)) as mean
    from public.jobs where id = any($1::uuid[])"""


async def wait_done(conn: asyncpg.Connection, ids: list[uuid.UUID], within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        done = await conn.fetchval("select count(*) from public.jobs where id = any($1::uuid[])"
                                   " and status in ('succeeded', 'failed')", ids)
        if done == len(ids):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{len(ids)} jobs not finished after {within:.0f} s")


def generation_mean_ms(before: dict[str, float], after: dict[str, float]) -> float:
    count = after.get("worker_generation_seconds_count", 0) - before.get("worker_generation_seconds_count", 0)
    total = after.get("worker_generation_seconds_sum", 0) - before.get("worker_generation_seconds_sum", 0)
    return total / count * 1000 if count else 0.0


async def one_level(ctx: Context, conn: asyncpg.Connection, load: Load, concurrency: int) -> Outcome:
    async with harness.worker(ctx.stack, ctx.folder, f"throughput-{concurrency}", processor=load.processor,
                              MAX_CONCURRENT_JOBS=str(concurrency)) as worker:
        before = worker.metrics()
        ids = await harness.insert_batch(conn, load.params, load.jobs)
        await wait_done(conn, ids, within=max(120.0, load.jobs * 2.0))
        after = worker.metrics()
    row = await conn.fetchrow(SUMMARY, ids)
    assert row is not None
    await harness.clear_jobs(conn)
    return Outcome(load, concurrency, row["succeeded"] / float(row["span"]), float(row["p50"]) * 1000,
                   float(row["mean"]) * 1000, generation_mean_ms(before, after), row["failed"])


def loads(ctx: Context) -> list[Load]:
    return [Load("pipeline, fake Gemini (no delay)", harness.PIPELINE, harness.PIPELINE_PARAMS,
                 ctx.size(60, 16)),
            Load("scripted, duration 0", harness.SCRIPTED, harness.script(0), ctx.size(1000, 200))]


async def measure(ctx: Context) -> list[Outcome]:
    conn = await asyncpg.connect(ctx.stack.dsn)
    try:
        await harness.clear_jobs(conn)
        return [await one_level(ctx, conn, load, level) for load in loads(ctx) for level in LEVELS]
    finally:
        await conn.close()


def describe(ctx: Context, outcomes: list[Outcome]) -> Section:
    section = ctx.results.section("Throughput and per-job overhead (zero-latency generator)")
    section.table(("processor", "MAX_CONCURRENT_JOBS", "jobs", "jobs/s", "in worker p50 ms",
                   "in worker mean ms", "generation mean ms", "outside generation mean ms", "failed"),
                  [(o.load.label, o.concurrency, o.load.jobs, f"{o.jobs_per_second:.1f}",
                    f"{o.in_worker_p50_ms:.1f}", f"{o.in_worker_mean_ms:.1f}",
                    f"{o.generation_mean_ms:.1f}", f"{o.outside_generation_ms:.1f}", o.failed)
                   for o in outcomes])
    section.text(
        "One burst per row, committed in one transaction while the worker (realtime mode) idles; "
        "jobs/s = jobs ÷ (last `ended_at` − `created_at`). \"In worker\" is `ended_at − started_at` "
        "(claim → completion, database clock); \"outside generation\" subtracts the mean of the "
        "worker's `worker_generation_seconds`, so for the pipeline it holds the claim's return, "
        "clean + thumbnail + PDF (CPU, in threads), three uploads and the completion. On 2 cores "
        "the fake Gemini (drawing in the devstack process), Postgres, the devstack and the worker "
        "share the CPU, so higher concurrency mostly queues for it. The claim round trip itself "
        "(before `started_at`) and the step-by-step split are in the *pipeline* section below.")
    return section


async def run(ctx: Context) -> None:
    describe(ctx, await measure(ctx))
