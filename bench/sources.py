"""Realtime sources: pickup for ``postgres_changes`` and Broadcast from Database, each under the
devstack's two timing models, beside procrastinate and pgqueuer in the same run; a run with 20 %
of events dropped and the sockets cut; the idle cost of the Broadcast worker.

Timing models (the devstack's ``realtime_timing`` knob): *immediate* delivers every change as its
NOTIFY arrives (loopback, the floor); *server* models the real Realtime server: ``postgres_changes``
wait for a replication poller (≤ 100 changes a poll, again at once after delivering some, 500 ms
when idle), Broadcast is streamed. Loopback pickups are sequential, as in ``pickup`` and for the
peers (one job, wait for its first line, 25 ms pause, next); server-timing pickups are an open
loop at 4 jobs/s (random arrival times), so a job meets the poller anywhere in its cycle.

The Broadcast runs need the migration's trigger (``migrate --wakeup broadcast``); it is applied
after the ``postgres_changes`` runs and dropped again at the end, so no other scenario pays for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass

import asyncpg

from bench import harness, pickup
from bench.competitors import Enqueue
from bench.context import Context
from bench.harness import Starts
from bench.idle import observe
from bench.processors import CLAIMED
from bench.report import Section
from realtime_worker import migrate

NAME = "sources"
DROP = 0.2
CUT_EVERY = 4.0  # seconds between socket cuts in the drop run
DROP_SWEEP = "5"  # the sweep interval of the drop run (seconds), so it ends in reasonable time
DROP_RATE = 10.0  # jobs per second in the drop run
SERVER_RATE = 4.0  # jobs per second in the server-timing pickups (open loop)
SOURCES = ("postgres_changes", "broadcast")
TIMINGS = ("immediate", "server")


@dataclass(frozen=True)
class Missed:
    source: str
    jobs: int
    claimed: int
    by_source: dict[str, float]
    dropped: str
    seconds: float

    def sources(self) -> str:
        return ", ".join(f"{name} {count:.0f}" for name, count in sorted(self.by_source.items()))


async def contract(ctx: Context, broadcast: bool) -> None:
    """Add the Broadcast wake-up's trigger and policies, or take the trigger away again."""
    conn = await asyncpg.connect(ctx.stack.dsn)
    try:
        if broadcast:
            await migrate.apply(conn, wakeup="broadcast")
        else:
            await conn.execute("drop trigger if exists worker_broadcast_job_insert on public.jobs")
            await conn.execute("delete from realtime.messages")
    finally:
        await conn.close()


async def timing(ctx: Context, model: str) -> None:
    await asyncio.to_thread(harness.set_faults, ctx.stack, {"realtime_timing": model})


async def source_runs(ctx: Context, starts: Starts, source: str, count: int) -> list[pickup.Run]:
    """Loopback timing sequentially, as the peers; the server's timing in an open loop, so jobs
    arrive at random moments of the poller's cycle (a sequential loop would lock onto it: each
    next job would come right after an empty poll and always wait nearly the whole 500 ms)."""
    runs = []
    for model in TIMINGS:
        await timing(ctx, model)
        rate = SERVER_RATE if model == "server" else None
        n = count if rate is None else ctx.size(300, 60)
        runs.append(await pickup.ours(ctx, starts, f"{source}-{model}", f"{source}, {model} timing", (),
                                      n, open_rate=rate, WAKEUP_SOURCE=source))
    await timing(ctx, "immediate")
    return runs


async def cut_sockets(ctx: Context, stop: asyncio.Event) -> int:
    cuts = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), CUT_EVERY)
        except TimeoutError:
            await asyncio.to_thread(harness.admin, ctx.stack, "realtime/cut")
            cuts += 1
    return cuts


async def missed_run(ctx: Context, starts: Starts, source: str, count: int) -> Missed:
    """Open loop at 10 jobs/s with 20 % of events dropped and the sockets cut every few seconds:
    every job must still be claimed (by the event, the replay, the catch-up or the sweep)."""
    await asyncio.to_thread(harness.set_faults, ctx.stack, {"realtime_drop_fraction": DROP, "seed": 19})
    started = time.monotonic()
    try:
        async with harness.worker(ctx.stack, ctx.folder, f"drop-{source}", starts=starts.address,
                                  experiment="claimed", MAX_CONCURRENT_JOBS="64",
                                  SWEEP_INTERVAL_SECONDS=DROP_SWEEP, WAKEUP_SOURCE=source) as worker, \
                pickup.our_producer(ctx.stack.dsn) as enqueue:
            stop = asyncio.Event()
            cutter = asyncio.create_task(cut_sockets(ctx, stop))
            committed = await open_loop(enqueue, starts, count)
            stop.set()
            cuts = await cutter
            claims = claimed_by_source(worker.metrics())
    finally:
        await asyncio.to_thread(harness.set_faults, ctx.stack, {"realtime_drop_fraction": 0.0})
    await pickup.clear(ctx)
    claimed = sum(1 for key in committed if CLAIMED + key in starts.seen)
    return Missed(source, len(committed), claimed, claims, f"{DROP:.0%} dropped, {cuts} socket cuts",
                  time.monotonic() - started)


async def open_loop(enqueue: Enqueue, starts: Starts, count: int) -> pickup.Committed:
    """Like ``pickup.open_loop`` at ``DROP_RATE``, but a job never claimed is counted, not fatal."""
    starts.clear()
    rng = random.Random(19)
    offsets = sorted(rng.uniform(0, count / DROP_RATE) for _ in range(count))
    origin, committed = time.monotonic(), {}
    for offset in offsets:
        await asyncio.sleep(max(0.0, origin + offset - time.monotonic()))
        key, at = await pickup.timed(enqueue)
        committed[key] = at
    deadline = time.monotonic() + 3 * float(DROP_SWEEP) + 10
    for key in committed:
        with contextlib.suppress(TimeoutError):
            await starts.wait(CLAIMED + key, within=max(0.01, deadline - time.monotonic()))
    return committed


def claimed_by_source(samples: dict[str, float]) -> dict[str, float]:
    prefix = 'worker_jobs_claimed_total{source="'
    return {name[len(prefix):-2]: v for name, v in samples.items() if name.startswith(prefix) and v}


async def idle_requests(ctx: Context, window: float) -> float:
    """Database requests per minute of an idle Broadcast worker (sweep every 30 s)."""
    async with harness.worker(ctx.stack, ctx.folder, "idle-broadcast", WAKEUP_SOURCE="broadcast") as w:
        idle = await observe(w, "broadcast (sweep 30 s)", 30.0, window)
    return idle.per_minute


async def measure(ctx: Context) -> tuple[list[pickup.Run], list[Missed], float]:
    count = ctx.size(300, 50)
    async with harness.start_receiver() as starts:
        runs = await source_runs(ctx, starts, "postgres_changes", count)
        runs += await pickup.competitors(ctx, starts, count)
        await contract(ctx, broadcast=True)
        try:
            runs += await source_runs(ctx, starts, "broadcast", count)
            missed = [await missed_run(ctx, starts, source, ctx.size(300, 100)) for source in SOURCES]
            idle = await idle_requests(ctx, ctx.size(120, 60))
        finally:
            await contract(ctx, broadcast=False)
    return runs, missed, idle


def describe(ctx: Context, runs: list[pickup.Run], missed: list[Missed], idle: float) -> Section:
    section = ctx.results.section("Realtime sources: postgres_changes vs Broadcast, loopback vs the "
                                  "server's timing")
    section.table(("worker", "method", "n", "→ claimed p50 ms", "p95", "p99", "→ first line p50 ms",
                   "p95", "p99", "load at start"),
                  [(r.label, r.method, pickup.count(r), *(f"{v:.2f}" for v in r.claimed.percentiles),
                    *(f"{v:.2f}" for v in r.latency.percentiles), r.load) for r in runs])
    section.table(("source", "jobs", "claimed", "claims by how they were found", "faults", "seconds"),
                  [(m.source, m.jobs, m.claimed, m.sources(), m.dropped, f"{m.seconds:.0f}") for m in missed])
    section.text(
        "Pickup rows: as in *Pickup latency* (the worker in its own process, the unchanged worker "
        "through `bench.experiments claimed`; loopback rows sequential like the peers', server-timing "
        f"rows an open loop at {SERVER_RATE:.0f} jobs/s so jobs arrive anywhere in the poller's cycle), "
        "with `WAKEUP_SOURCE` set and the devstack's "
        "`realtime_timing` fault knob at *immediate* (loopback: delivered as the NOTIFY arrives) or "
        "*server* (postgres_changes behind the modelled replication poller: at most 100 changes a poll, "
        "500 ms between polls when idle; Broadcast streamed, as the real server reads realtime.messages "
        "by logical replication). The competitors use LISTEN/NOTIFY on a direct connection; they have no "
        "Realtime server in between, so their rows are the same in both models.",
        f"Drop rows: open loop at {DROP_RATE:.0f} jobs/s, {DROP:.0%} of events dropped by the devstack, "
        f"the sockets cut every {CUT_EVERY:.0f} s, sweep every {DROP_SWEEP} s; *claimed* counts jobs "
        "whose claim reached the worker; *replay* claims were woken by a message the server replayed "
        "on a rejoin, *catchup* by the claim after each resubscription, *sweep* by the timer.",
        f"Idle Broadcast worker: {idle:.1f} database requests a minute (the sweep; the websocket's "
        "heartbeats and the server's replay query are not requests of the worker).",
        "What these mean on a real project (the network both ways, the real poller, the default "
        "and why): `docs/realtime-sources.md`.")
    return section


def check_targets(ctx: Context, runs: list[pickup.Run], missed: list[Missed], idle: float) -> None:
    by_key = {r.key: r for r in runs}
    add = ctx.results.target
    peers = [r for r in runs if r.key in ("procrastinate", "pgqueuer")]
    loopback = min(by_key[f"{s}-immediate"].claimed.p50 for s in SOURCES)
    if peers:
        best = min(peers, key=lambda r: r.claimed.p50)
        ratio = loopback / best.claimed.p50
        add(19, "loopback pickup p50 (commit → claimed), best source vs best peer", "within 2×",
            f"{ratio:.2f}× ({loopback:.2f} ms vs {best.key} {best.claimed.p50:.2f} ms)", ratio <= 2)
    broadcast, changes = by_key["broadcast-server"].claimed, by_key["postgres_changes-server"].claimed
    add(19, "server timing: broadcast pickup p50", "≤ 20 ms (postgres_changes shows its poller)",
        f"{broadcast.p50:.2f} ms (postgres_changes {changes.p50:.1f} ms)", broadcast.p50 <= 20)
    lost = sum(m.jobs - m.claimed for m in missed)
    add(19, "jobs never claimed with 20 % of events dropped and sockets cut", "0",
        ", ".join(f"{m.source} {m.jobs - m.claimed} of {m.jobs}" for m in missed), lost == 0)
    add(19, "idle database requests/min, broadcast source", "≤ 4/min", f"{idle:.1f}/min", idle <= 4)


async def run(ctx: Context) -> None:
    waited = await pickup.quiet()
    runs, missed, idle = await measure(ctx)
    describe(ctx, runs, missed, idle).text(f"Before measuring, the scenario {waited}.")
    check_targets(ctx, runs, missed, idle)
