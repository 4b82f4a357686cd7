"""Pickup latency: the committing INSERT returned (producer) → the job was claimed (the claim's
answer reached the worker: #7's definition) and → the job's first line ran (worker).

Same run, same Postgres, same producer (this process), same clock (``time.monotonic``, system-wide
on Linux), each worker in its own process:

- our worker in realtime mode (Realtime event → ``worker_claim_job`` over PostgREST), and
  procrastinate and pgqueuer (LISTEN/NOTIFY) with a no-op task: **sequential** — insert one
  job, wait until it started, a 25 ms pause so the worker is idle again, next; 20 warm-up jobs;
- our worker in poll-only mode at 5 s and at 1 s: **open loop** — jobs are inserted at uniformly
  random times at 10 jobs/s and each one's latency is measured; a sequential loop would insert
  right after each poll and so measure the whole interval every time, and 500 sequential jobs
  with a random pause each would take ~40 min at 5 s.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import asyncpg

from bench import harness
from bench.competitors import COMPETITORS, DSN_ENV, Competitor, Enqueue, statement_producer, version
from bench.context import Context
from bench.harness import Spread, Starts
from bench.processors import CLAIMED
from bench.report import Section
from realtime_worker_devstack.stack import DEV_USER_ID

NAME = "pickup"
WARM_UP = 20
PAUSE = 0.025
OPEN_LOOP_RATE = 10.0  # jobs per second in the poll-only runs
ANCHORS = "perf-anchors.md (same kind of machine): pgqueuer 2.00–2.59 ms, procrastinate 1.98–2.42 ms p50"


@dataclass(frozen=True)
class Run:
    key: str
    label: str
    method: str
    latency: Spread  # milliseconds, to the job's first line
    claimed: Spread  # milliseconds, to the claim's answer in the worker
    load: str
    split: list[tuple[str, Spread]] = field(default_factory=list)  # hops of a traced run


async def timed(enqueue: Enqueue) -> tuple[str, float]:
    key = await enqueue()
    return key, time.monotonic()


Committed = dict[str, float]  # job key → when its enqueue call returned


def latencies(starts: Starts, committed: Committed, prefix: str = "") -> Spread:
    """To each job's first line, or (``prefix=CLAIMED``) to its claim's answer; a report lost
    on the way is left out (the count shows it)."""
    return Spread.of([(starts.seen[prefix + key] - at) * 1000 for key, at in committed.items()
                      if prefix + key in starts.seen])


async def sequential(enqueue: Enqueue, starts: Starts, count: int) -> Committed:
    """One job at a time; the measured jobs (after ``WARM_UP`` discarded ones) and their commits."""
    starts.clear()
    committed = {}
    for index in range(WARM_UP + count):
        key, at = await timed(enqueue)
        await starts.wait(key, within=60.0 if index == 0 else 30.0)
        if index >= WARM_UP:
            committed[key] = at
        await asyncio.sleep(PAUSE)
    return committed


async def open_loop(enqueue: Enqueue, starts: Starts, count: int, rng: random.Random,
                    rate: float = OPEN_LOOP_RATE) -> Committed:
    """Jobs inserted at uniformly random times at ``rate`` a second; each one's commit."""
    starts.clear()
    offsets = sorted(rng.uniform(0, count / rate) for _ in range(count))
    origin, committed = time.monotonic(), {}
    for offset in offsets:
        await asyncio.sleep(max(0.0, origin + offset - time.monotonic()))
        key, at = await timed(enqueue)
        committed[key] = at
    for key in committed:
        await starts.wait(key, within=30.0)
    return committed


def our_producer(dsn: str) -> AbstractAsyncContextManager[Enqueue]:
    """Our plain INSERT, on the same insert path as the competitors' jobs."""
    params = harness.script(0)
    return statement_producer(dsn, "", lambda _conn: (harness.INSERT_JOB, (DEV_USER_ID, params)))


async def ours(ctx: Context, starts: Starts, key: str, label: str, args: tuple[str, ...], count: int,
               poll_interval: str = "5", experiment: str | None = None, open_rate: float | None = None,
               **env: str) -> Run:
    load = harness.load_average()
    async with harness.worker(ctx.stack, ctx.folder, key, args=args,
                              starts=starts.address, experiment=experiment or "claimed",
                              MAX_CONCURRENT_JOBS="64", POLL_INTERVAL_SECONDS=poll_interval, **env), \
            our_producer(ctx.stack.dsn) as enqueue:
        if args or open_rate:
            rate = open_rate or OPEN_LOOP_RATE
            committed = await open_loop(enqueue, starts, count, random.Random(7), rate)
            method = f"open loop, {count} jobs at {rate:.0f}/s"
        else:
            committed = await sequential(enqueue, starts, count)
            method = f"sequential, {count} jobs + {WARM_UP} warm-up"
    await clear(ctx)
    split = hops(starts, committed) if experiment == "trace" else []
    return Run(key, label, method, latencies(starts, committed), latencies(starts, committed, CLAIMED),
               load, split)


async def theirs(ctx: Context, starts: Starts, competitor: Competitor, count: int) -> list[Run]:
    """Two runs on one worker process: enqueued on our insert path (judged), then through the
    library's Python API (shown)."""
    await competitor.install(ctx.stack.dsn)
    env = {**harness.base_env(), DSN_ENV: ctx.stack.dsn,
           harness.STARTS_ENV: f"{starts.address[0]}:{starts.address[1]}"}
    child = harness.Child.spawn(competitor.command(), env, ctx.folder / f"{competitor.name}.log")
    label = f"{competitor.name} {version(competitor.package)}"
    method = f"sequential, {count} jobs + {WARM_UP} warm-up ({competitor.wake_up})"
    runs = []
    try:
        for key, producer, how in ((competitor.name, competitor.producer, "its enqueue SQL over asyncpg"),
                                   (f"{competitor.name}-api", competitor.api_producer, competitor.api)):
            load = harness.load_average()
            async with producer(ctx.stack.dsn) as enqueue:
                committed = await sequential(enqueue, starts, count)
            runs.append(Run(key, f"{label}, enqueued by {how}", method, latencies(starts, committed),
                            latencies(starts, committed, CLAIMED), load))
    finally:
        await child.stop()
    return runs


HOPS = (("INSERT committed → Realtime callback in the worker", "", "trace:event:"),
        ("callback → claim RPC sent (dispatcher wake-up)", "trace:event:", "trace:claim-sent:"),
        ("claim RPC round trip (aiohttp POST → devstack → worker_claim_job)", "trace:claim-sent:",
         CLAIMED),
        ("claim returned → processor's first line", CLAIMED, ""))


def hops(starts: Starts, committed: Committed) -> list[tuple[str, Spread]]:
    """Where a realtime pickup's time goes, hop by hop (from the traced run), in ms."""
    def moment(prefix: str, key: str) -> float:
        return starts.seen[prefix + key] if prefix else committed[key]

    def finish(prefix: str, key: str) -> float:
        return starts.seen[prefix + key]  # "" + key: the processor's first line

    return [(label, Spread.of([(finish(end, k) - moment(start, k)) * 1000 for k in committed]))
            for label, start, end in HOPS]


async def competitors(ctx: Context, starts: Starts, count: int) -> list[Run]:
    """The established queues; one that is not installed is reported, not fatal."""
    runs = []
    for competitor in COMPETITORS.values():
        try:
            runs += await theirs(ctx, starts, competitor, count)
        except RuntimeError as exc:
            ctx.results.failures.append(f"{NAME}/{competitor.name}: {exc}")
    return runs


async def clear(ctx: Context) -> None:
    conn = await asyncpg.connect(ctx.stack.dsn)
    try:
        await harness.clear_jobs(conn)
    finally:
        await conn.close()


async def quiet(most: float = 180.0) -> str:
    """Wait (at most ``most`` seconds) for the 1-minute load average to fall below the core count;
    latency figures on a machine busy with other work measure the other work."""
    started, cores = time.monotonic(), os.cpu_count() or 1
    for _ in range(int(most / 5)):
        if os.getloadavg()[0] <= cores:
            break
        await asyncio.sleep(5.0)
    waited = time.monotonic() - started
    return (f"waited {waited:.0f} s for the 1-min load average to fall below {cores}; "
            f"it was {harness.load_average()} when the scenario began")


async def measure(ctx: Context) -> list[Run]:
    sequential_count = ctx.size(500, 100)
    open_count = ctx.size(500, 100)
    runs = []
    async with harness.start_receiver() as starts:
        runs.append(await ours(ctx, starts, "realtime", "realtime-worker, realtime mode", (),
                               sequential_count))
        runs += await competitors(ctx, starts, sequential_count)
        runs.append(await ours(ctx, starts, "budget", "realtime mode, fleet Gemini budget on", (),
                               sequential_count, GEMINI_RPM="6000", GEMINI_MAX_CONCURRENT="64"))
        runs.append(await ours(ctx, starts, "traced", "realtime mode, traced hop by hop", (),
                               ctx.size(300, 50), experiment="trace"))
        runs.append(await ours(ctx, starts, "poll1", "realtime-worker, poll-only 1 s", ("--poll-only",),
                               open_count, poll_interval="1"))
        runs.append(await ours(ctx, starts, "poll5", "realtime-worker, poll-only 5 s", ("--poll-only",),
                               open_count, poll_interval="5"))
    return runs


def count(run: Run) -> str:
    missing = run.latency.count - run.claimed.count
    return f"{run.latency.count}" + (f" ({missing} claims unreported)" if missing else "")


def describe(ctx: Context, runs: list[Run]) -> Section:
    section = ctx.results.section("Pickup latency: INSERT committed → job claimed, and → job's first line")
    section.table(("worker", "method", "n", "→ claimed p50 ms", "p95", "p99", "→ first line p50 ms",
                   "p95", "p99", "min", "max", "load at start"),
                  [(r.label, r.method, count(r), *(f"{v:.2f}" for v in r.claimed.percentiles),
                    *(f"{v:.2f}" for v in (*r.latency.percentiles, r.latency.low, r.latency.high)), r.load)
                   for r in runs])
    section.text(
        "The producer is the bench process. Every system's jobs are enqueued on the same path: one "
        "asyncpg connection sends one statement (our plain `INSERT … returning id`; procrastinate's "
        "`procrastinate_defer_jobs_v1(…)` and pgqueuer's enqueue query, with the arguments their "
        "`defer_async` and `Queries.enqueue` pass), and the bench takes `time.monotonic()` when it "
        "returned; these rows are judged. The rows *enqueued by* `defer_async` / `Queries.enqueue` "
        "run the same worker process again with jobs sent through the library's Python API, whose "
        "client work after the commit delays the moment taken (and so shortens the latency); they "
        "are shown, not judged. The job's first line takes `time.monotonic()` in the worker process "
        "and sends it back as a UDP datagram (`bench/processors.py`, `bench/competitors.py`); so does "
        "the moment the claim's answer reached the worker (*→ claimed*, the end of a pickup as #7 "
        "defines it): our queue's `claim_job`/`claim_jobs` returned (`bench/experiments.py`), "
        "procrastinate's `JobManager.fetch_job` or pgqueuer's `Queries.dequeue` returned a job. Our "
        "worker runs as "
        "`python -m bench.experiments claimed run --processor bench.processors:timestamped` (the "
        "unchanged worker, with that report added to its queue) with "
        "`MAX_CONCURRENT_JOBS=64`, `LOG_LEVEL=INFO`, `LOG_FORMAT=json`, against the devstack in "
        "its own process (Realtime over a websocket, RPC over PostgREST-style HTTP).",
        f"Reference: {ANCHORS}.")
    for run in runs:
        if run.split:
            section.text(f"Where the time goes ({run.label}; the callback and the claim report their "
                         "own `time.monotonic()` the same way as the processor):")
            section.table(("hop", "p50 ms", "p95 ms", "p99 ms"),
                          [(hop, f"{s.p50:.2f}", f"{s.p95:.2f}", f"{s.p99:.2f}") for hop, s in run.split])
    return section


def check_targets(ctx: Context, runs: list[Run]) -> None:
    by_key = {r.key: r for r in runs}
    realtime, poll5 = by_key["realtime"].latency, by_key["poll5"].latency
    add = ctx.results.target
    add(4, "pickup p50, realtime mode", "≤ 6 ms", f"{realtime.p50:.2f} ms", realtime.p50 <= 6)
    add(4, "pickup p99, realtime mode", "≤ 20 ms", f"{realtime.p99:.2f} ms", realtime.p99 <= 20)
    ratio = poll5.p50 / realtime.p50
    add(4, "p50 poll-only 5 s ÷ p50 realtime", "≥ 400×", f"{ratio:,.0f}× ({poll5.p50:,.0f} ms vs "
        f"{realtime.p50:.2f} ms)", ratio >= 400)
    if "budget" in by_key:
        plain, budget = by_key["realtime"].claimed, by_key["budget"].claimed
        add(18, "pickup p50 (commit → claimed) with the fleet Gemini budget on",
            "no change: within 1 ms of the realtime row", f"{budget.p50:.2f} ms vs {plain.p50:.2f} ms"
            f" ({budget.p50 - plain.p50:+.2f} ms)", budget.p50 - plain.p50 <= 1.0)
    what = "pickup p50 (commit → claimed), realtime vs best of procrastinate / pgqueuer"
    if not any(name in by_key for name in COMPETITORS):
        add(7, what, "within 2×", "not run", None)
        return
    ours = by_key["realtime"]

    def versus(end: str, keys: list[str]) -> tuple[float, str]:
        best, name = min((getattr(by_key[k], end).p50, k.removesuffix("-api")) for k in keys if k in by_key)
        mine = getattr(ours, end).p50
        return mine / best, f"{mine / best:.2f}× ({mine:.2f} ms vs {name} {best:.2f} ms)"

    ratio, measured = versus("claimed", list(COMPETITORS))
    measured += f"; to the first line {versus('latency', list(COMPETITORS))[1]}"
    if any(f"{name}-api" in by_key for name in COMPETITORS):
        api = [f"{name}-api" for name in COMPETITORS]
        measured += (f"; enqueued through the libraries' APIs: {versus('claimed', api)[1]}, "
                     f"to the first line {versus('latency', api)[1]}")
    add(7, what, "within 2×", measured, ratio <= 2)


async def run(ctx: Context) -> None:
    waited = await quiet()
    runs = await measure(ctx)
    describe(ctx, runs).text(f"Before measuring, the scenario {waited}.")
    check_targets(ctx, runs)
