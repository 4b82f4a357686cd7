"""Memory: RSS of a worker process idle and with 64 jobs in flight (8 s each).

(a) the scripted processor with ``duration`` 8 (as issue 4 states it), ``MAX_CONCURRENT_JOBS=64``;
(b) the real pipeline with the devstack's fake Gemini answering after 8 s (fault
``gemini_latency_seconds``), ``MAX_CONCURRENT_JOBS=64``: 64 requests held open, then 64 pages
cleaned, thumbnailed and turned into PDFs (``IMAGE_THREADS`` at a time) and uploaded.
RSS (``VmRSS`` of the worker process) is sampled every 0.2 s with ``worker_jobs_in_flight``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from bench import harness
from bench.context import Context
from bench.harness import Stack, Worker, set_faults
from bench.report import Section

NAME = "memory"
IN_FLIGHT = 64
DURATION = 8.0


@dataclass(frozen=True)
class Footprint:
    label: str
    idle_mib: float
    full_mib: float  # highest RSS while all 64 were in flight
    peak_mib: float  # highest RSS until every job ended
    most_in_flight: int
    seconds: float


@asynccontextmanager
async def gemini_latency(stack: Stack, seconds: float) -> AsyncIterator[None]:
    await asyncio.to_thread(set_faults, stack, {"gemini_latency_seconds": seconds})
    try:
        yield
    finally:
        await asyncio.to_thread(set_faults, stack, {"gemini_latency_seconds": 0.0})


async def finished(conn: asyncpg.Connection, ids: list[uuid.UUID]) -> bool:
    done: int = await conn.fetchval("select count(*) from public.jobs where id = any($1::uuid[])"
                                    " and status in ('succeeded', 'failed')", ids)
    return done == len(ids)


async def sample(worker: Worker, conn: asyncpg.Connection, ids: list[uuid.UUID],
                 within: float) -> tuple[float, float, int]:
    """(highest RSS with all in flight, highest RSS overall, most in flight) until all ended."""
    full = peak = 0.0
    most, deadline = 0, time.monotonic() + within
    while not await finished(conn, ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ids)} jobs not finished after {within:.0f} s")
        rss = worker.rss_mib()
        in_flight = int(worker.metrics().get("worker_jobs_in_flight", 0))
        peak, most = max(peak, rss), max(most, in_flight)
        if in_flight >= IN_FLIGHT:
            full = max(full, rss)
        await asyncio.sleep(0.2)
    return full, peak, most


async def footprint(ctx: Context, conn: asyncpg.Connection, label: str, processor: str,
                    params: str) -> Footprint:
    async with harness.worker(ctx.stack, ctx.folder, f"memory-{processor.rsplit(':', 1)[1]}",
                              processor=processor, MAX_CONCURRENT_JOBS=str(IN_FLIGHT)) as worker:
        await asyncio.sleep(2.0)
        idle = worker.rss_mib()
        started = time.monotonic()
        ids = await harness.insert_batch(conn, params, IN_FLIGHT)
        full, peak, most = await sample(worker, conn, ids, within=180.0)
    await harness.clear_jobs(conn)
    return Footprint(label, idle, full, peak, most, time.monotonic() - started)


async def measure(ctx: Context) -> list[Footprint]:
    conn = await asyncpg.connect(ctx.stack.dsn)
    try:
        await harness.clear_jobs(conn)
        scripted = await footprint(ctx, conn, "scripted processor, duration 8 s", harness.SCRIPTED,
                                   harness.script(DURATION))
        async with gemini_latency(ctx.stack, DURATION):
            pipeline = await footprint(ctx, conn, "pipeline, fake Gemini answering after 8 s",
                                       harness.PIPELINE, harness.PIPELINE_PARAMS)
        return [scripted, pipeline]
    finally:
        await conn.close()


def describe(ctx: Context, prints: list[Footprint]) -> Section:
    section = ctx.results.section("Memory: RSS idle and with 64 jobs in flight")
    section.table(("processor", "RSS idle", "RSS with 64 in flight (max)", "RSS peak until all ended",
                   "most in flight seen", "64 jobs took"),
                  [(p.label, f"{p.idle_mib:.0f} MiB", f"{p.full_mib:.0f} MiB", f"{p.peak_mib:.0f} MiB",
                    p.most_in_flight, f"{p.seconds:.1f} s") for p in prints])
    section.text("`MAX_CONCURRENT_JOBS=64`, realtime mode; 64 jobs committed in one transaction. "
                 "RSS is the worker process's `VmRSS`, sampled every 0.2 s.")
    return section


async def run(ctx: Context) -> None:
    prints = await measure(ctx)
    describe(ctx, prints)
    scripted = prints[0]
    measured = f"{scripted.full_mib:.0f} MiB (pipeline, 8 s Gemini: peak {prints[1].peak_mib:.0f} MiB)"
    ctx.results.target(4, "RSS with 64 jobs in flight (scripted, 8 s)", "≤ 400 MB", measured,
                       scripted.most_in_flight >= IN_FLIGHT and scripted.full_mib * 2**20 <= 400e6)
