"""Idle cost: database requests per minute while nothing is queued, per mode, and idle RSS.

Two workers with the production processor (the pipeline) idle side by side — one in realtime
mode (sweep every 30 s), one poll-only at 5 s. Requests are counted by each worker itself:
``worker_db_requests_total`` on its ``/metrics`` counts every call of the database contract (each
is one PostgREST request). Each window starts half an interval after a sweep and spans a whole
number of intervals, so it holds exactly the sweeps that fall in it; ``/ready`` (which pings the
database) is not called during the window. The Realtime websocket's own heartbeat frames are not
database requests and are not counted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bench import harness
from bench.context import Context
from bench.harness import Worker
from bench.report import Section

NAME = "idle"
OLD_WORKER_PER_MINUTE = 24.0  # a select of queued jobs + a select of recent jobs every 5 s
REALTIME_SWEEP, POLL_INTERVAL = 30.0, 5.0
SCRAPE_ONLY = frozenset({"worker_queue_depth"})  # read only to answer a scrape of /metrics


@dataclass(frozen=True)
class Idle:
    mode: str
    window_seconds: float
    requests: dict[str, float]
    rss_mib: float

    @property
    def counts(self) -> str:
        return ", ".join(f"{name} {count:.0f}" for name, count in sorted(self.requests.items()))

    @property
    def per_minute(self) -> float:
        """The worker's own requests a minute: without the queue-depth reads that answered the
        bench's own /metrics scrapes (one per scrape, made only when /metrics is asked)."""
        own = sum(v for k, v in self.requests.items() if k not in SCRAPE_ONLY)
        return own / (self.window_seconds / 60)


def requests(samples: dict[str, float]) -> dict[str, float]:
    prefix = 'worker_db_requests_total{function="'
    return {name[len(prefix):-2]: value for name, value in samples.items() if name.startswith(prefix)}


async def window_start(worker: Worker, interval: float) -> None:
    """Sleep until half an interval after this worker's last sweep (its next quiet moment)."""
    last = worker.metrics().get("worker_last_sweep_timestamp_seconds", time.time())
    target = last + interval / 2
    while target < time.time() + 0.5:
        target += interval
    await asyncio.sleep(target - time.time())


async def observe(worker: Worker, mode: str, interval: float, window: float) -> Idle:
    await window_start(worker, interval)
    before = requests(worker.metrics())
    await asyncio.sleep(window)
    after = requests(worker.metrics())
    counted = {name: after[name] - before.get(name, 0.0) for name in after}
    return Idle(mode, window, {k: v for k, v in counted.items() if v}, worker.rss_mib())


async def measure(ctx: Context, window: float) -> list[Idle]:
    async with harness.worker(ctx.stack, ctx.folder, "idle-realtime", processor=harness.PIPELINE) as rt, \
            harness.worker(ctx.stack, ctx.folder, "idle-poll", processor=harness.PIPELINE,
                           args=("--poll-only",), POLL_INTERVAL_SECONDS=str(POLL_INTERVAL)) as poll, \
            harness.worker(ctx.stack, ctx.folder, "idle-budget", processor=harness.PIPELINE,
                           GEMINI_RPM="60") as budgeted:
        return list(await asyncio.gather(
            observe(rt, "realtime (sweep 30 s)", REALTIME_SWEEP, window),
            observe(poll, "poll-only 5 s", POLL_INTERVAL, window),
            observe(budgeted, "realtime, fleet Gemini budget on (GEMINI_RPM=60)", REALTIME_SWEEP,
                    window)))


def describe(ctx: Context, idles: list[Idle]) -> Section:
    section = ctx.results.section("Idle cost: database requests per minute with nothing queued")
    rows: list[tuple[object, ...]] = [
        (i.mode, f"{i.window_seconds:.0f} s", i.counts, f"{i.per_minute:.1f}", f"{i.rss_mib:.0f} MiB")
        for i in idles]
    rows.append(("old TypeScript worker (poll 5 s)", "—", "2 selects every 5 s",
                 f"{OLD_WORKER_PER_MINUTE:.0f}", "—"))
    section.table(("mode", "window", "requests in window", "requests/min", "RSS idle"), rows)
    section.text("The workers ran at the same time, with the pipeline processor (the production "
                 "default), counted over a window of whole sweep intervals (measured, not extrapolated). "
                 "*requests/min* counts the worker's own requests: a `worker_queue_depth` in the window "
                 "answered the bench's closing scrape of `/metrics` (the queue depth is read only when "
                 "`/metrics` is scraped: one request per scrape, so a scraper every 60 s adds one a "
                 "minute; the CREMA rule reads Postgres itself and needs no scrape).")
    return section


async def run(ctx: Context) -> None:
    idles = await measure(ctx, ctx.size(120, 30))
    describe(ctx, idles)
    realtime, poll, budgeted = idles
    ctx.results.target(4, "idle database requests/min, realtime mode", "≤ 4/min (old worker 24/min)",
                       f"{realtime.per_minute:.1f}/min (poll-only 5 s: {poll.per_minute:.1f}/min)",
                       realtime.per_minute <= 4)
    ctx.results.target(18, "idle database requests/min, fleet Gemini budget on", "≤ 4/min (unchanged)",
                       f"{budgeted.per_minute:.1f}/min ({budgeted.counts})", budgeted.per_minute <= 4)
    ctx.results.target(4, "RSS idle (pipeline processor, realtime mode)", "≤ 150 MB",
                       f"{realtime.rss_mib:.0f} MiB", realtime.rss_mib * 2**20 <= 150e6)
