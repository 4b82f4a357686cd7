"""Chaos soak: three worker processes over ≥ 1,000 jobs while everything around them fails.

``uv run python -m bench.chaos --jobs 1000 --seed 1``

What runs: an embedded Postgres (``pgserver``, under a temporary folder) with the Supabase base,
the app's schema, the worker's migration and a harness-only audit trigger; the devstack as its own
process (``realtime-worker devstack``) over it; three ``realtime-worker run`` processes with the
real pipeline (``realtime_worker.pipeline:open_pipeline``) and the fake Gemini.

What goes wrong, from seeded random sources: Realtime drops 20 % of events and every socket is cut
every few seconds; Gemini answers 5 % 429 and 5 % 503, refuses 2 % (safety) and is slow for 2 %
(longer than the lease and than the workers' Gemini time-out, so those calls end as time-outs) and
never answers 1 %; it refuses the API key (401) for a minute late in the insert phase, then takes
it again; 1 % of Storage downloads drip a byte a second (only JOB_TIMEOUT_SECONDS ends those jobs);
every fourth user's photo is a large one (12 MP, ~5 MB);
a random worker is ``kill -9``-ed and restarted under a new WORKER_ID every few seconds (when that
worker is through its start-up; a round that picks one still starting kills nobody); Postgres
is restarted once (``pg_ctl restart -m fast``) while jobs are being submitted.

What is checked when every job has ended (or the time budget is spent), each a line of the
printed table; the exit code is 1 when any fails: no lost job; every submitted job present once;
no job completed twice (the audit), one edge_map + thumbnail + PDF asset row per succeeded job and
none for failed ones, each output in ``storage.objects`` and on disk with the recorded hash; every
failed job refunded exactly once, no succeeded job refunded, every user's balance = start -
jobs submitted + refunds; every job a killed worker held recovered, and back in the queue (its
lease reaped) or ended within lease + sweep interval + a 2 s margin, not counting time in which the
stack itself was stalled (a probe every 0.25 s, unanswered > 0.5 s) or Postgres restarting; the
time until it was claimed again is reported too (with a backlog it also waits behind older jobs);
Gemini calls per job ≤ claims, duplicates ≤ retries + jobs held at kills + leases lost to the
restart; no worker died unless killed, each exits 0 on the final SIGTERM; a Realtime subscriber
of the harness still gets INSERT events after the restart.

Seeds make the job mix, bursts, kills and cuts reproducible; the interleaving with the processes is
not. ``--keep`` keeps the run's folder (worker and devstack logs, stored objects).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import anyio.to_thread
import asyncpg
import httpx

from bench import chaos_load as load
from bench.chaos_checks import Facts, Verdict, claims_by_source, judge, read_snapshot, render
from bench.chaos_stack import (
    DevstackProcess,
    EmbeddedPostgres,
    Kill,
    WorkerFleet,
    restart_postgres,
    start_devstack,
    stop_process,
    worker_env,
)
from realtime_worker import imaging, logs
from realtime_worker.health_state import RealtimeLink
from realtime_worker.listener import Listener, ListenerSettings
from realtime_worker.metrics import Metrics

Out = Callable[[str], None]
PROGRESS_EVERY = 10.0
PROBE_EVERY = 0.25
STALL_SECONDS = 0.5  # a probe unanswered for longer marks the stack as stalled


@dataclass(frozen=True)
class ChaosConfig:
    jobs: int = 1000
    seed: int = 1
    users: int = 8
    workers: int = 3
    insert_seconds: float = 90.0
    budget_seconds: float = 900.0
    lease_seconds: int = 6
    sweep_seconds: float = 2.0
    max_concurrent_jobs: int = 8
    gemini_timeout_seconds: float = 8.0
    gemini_slow_seconds: float = 20.0
    kill_every: tuple[float, float] = (3.0, 6.0)
    cut_every: tuple[float, float] = (2.0, 5.0)
    restart_at: float = 0.45  # fraction of the insert phase
    job_timeout_seconds: float = 30.0  # well above a job on a busy 2-core machine
    drip_fraction: float = 0.01  # Storage downloads sent a byte every drip_seconds
    drip_seconds: float = 1.0
    gemini_hang_fraction: float = 0.01
    key_reject_at: float = 0.7  # fraction of the insert phase: Gemini answers 401 from then on
    key_reject_seconds: float = 60.0  # … for this long, then accepts the key again
    config_pause_seconds: float = 30.0  # the workers' first cool-down after it (CONFIG_PAUSE_SECONDS)
    large_photo_every: int = 4  # every n-th user's photo is a large one (large_photo in chaos_load)
    margin_seconds: float = 2.0
    keep: bool = False

    def command(self) -> str:
        parts = ["uv run python -m bench.chaos", f"--jobs {self.jobs}", f"--seed {self.seed}"]
        defaults = ChaosConfig()
        parts += [f"--{name.replace('_', '-')} {getattr(self, name):g}"
                  for name in ("insert_seconds", "budget_seconds", "users")
                  if getattr(self, name) != getattr(defaults, name)]
        return " ".join(parts)

    def worker_settings(self) -> dict[str, str]:
        return {"LEASE_SECONDS": str(self.lease_seconds), "SWEEP_INTERVAL_SECONDS": f"{self.sweep_seconds:g}",
                "MAX_CONCURRENT_JOBS": str(self.max_concurrent_jobs),
                "GEMINI_TIMEOUT_SECONDS": f"{self.gemini_timeout_seconds:g}",
                "JOB_TIMEOUT_SECONDS": f"{self.job_timeout_seconds:g}",
                "SHUTDOWN_GRACE_SECONDS": "2",
                "CONFIG_PAUSE_SECONDS": f"{self.config_pause_seconds:g}"}

    def faults(self) -> dict[str, Any]:
        """Marginal rates as the issue states them; the fake draws its faults one after another,
        so each later one is divided by the share of calls still left to it."""
        p429 = 0.05
        p503 = 0.05 / (1 - p429)
        p_slow = 0.02 / ((1 - p429) * (1 - p503))
        p_hang = self.gemini_hang_fraction / ((1 - p429) * (1 - p503) * (1 - p_slow))
        p_safety = 0.02 / ((1 - p429) * (1 - p503) * (1 - p_slow) * (1 - p_hang))
        return {"seed": self.seed, "realtime_drop_fraction": 0.2, "gemini_429_fraction": p429,
                "gemini_503_fraction": p503, "gemini_retry_delay_seconds": 1.0,
                "gemini_slow_fraction": p_slow, "gemini_slow_seconds": self.gemini_slow_seconds,
                "gemini_hang_fraction": p_hang, "gemini_safety_fraction": p_safety,
                "storage_drip_fraction": self.drip_fraction,
                "storage_drip_seconds": self.drip_seconds}

    def rng(self, stream: str) -> random.Random:
        return random.Random(f"{self.seed}/{stream}")


@dataclass
class ChaosResult:
    config: ChaosConfig
    verdict: Verdict
    seconds: float
    text: str

    @property
    def ok(self) -> bool:
        return self.verdict.ok


@dataclass
class Disruptions:
    """What the chaos did, as the checks need it."""

    restart: tuple[float, float] | None = None
    cuts: int = 0
    cut_errors: int = 0
    crashes: list[str] = field(default_factory=list)
    timed_out: bool = False
    stalls: list[tuple[float, float]] = field(default_factory=list)
    realtime_events: list[float] = field(default_factory=list)
    exit_codes: dict[str, int | None] = field(default_factory=dict)


@dataclass
class Run:
    config: ChaosConfig
    run_dir: Path
    pg: EmbeddedPostgres
    dsn: str
    devstack: DevstackProcess
    fleet: WorkerFleet
    http: httpx.AsyncClient
    out: Out
    disruptions: Disruptions = field(default_factory=Disruptions)


# --- the run ------------------------------------------------------------------------------------


def gemini_history(config: ChaosConfig) -> int:
    """Room for every Gemini request of the run in the fake's log (about 1.3 per job here)."""
    return 4 * config.jobs + 1000


def new_run_dir() -> Path:
    """A fresh folder for the run; readable by the server, which runs as another user under root."""
    run_dir = Path(tempfile.mkdtemp(prefix="rw-chaos-"))
    run_dir.chmod(0o755)
    return run_dir


async def run_chaos(config: ChaosConfig, out: Out = print) -> ChaosResult:
    """Build everything, run the soak, judge it, tear everything down."""
    started = time.monotonic()
    out(f"chaos soak: seed {config.seed}, {config.jobs} jobs; command: {config.command()}")
    run_dir = new_run_dir()
    pg = await anyio.to_thread.run_sync(EmbeddedPostgres.start, run_dir / "pg")
    try:
        dsn = await load.prepare_database(pg.admin_dsn)
        verdict = await _with_stack(config, run_dir, pg, dsn, out)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(pg.stop)
            if config.keep:
                out(f"kept: {run_dir}")
            else:
                shutil.rmtree(run_dir, ignore_errors=True)
    seconds = time.monotonic() - started
    text = _report(config, verdict, seconds)
    out(text)
    return ChaosResult(config, verdict, seconds, text)


async def _with_stack(config: ChaosConfig, run_dir: Path, pg: EmbeddedPostgres, dsn: str,
                      out: Out) -> Verdict:
    devstack = await start_devstack(run_dir, dsn, config.seed, gemini_history(config))
    fleet = WorkerFleet(worker_env(devstack, config.worker_settings()), run_dir, config.workers)
    try:
        async with devstack.http() as http:
            run = Run(config, run_dir, pg, dsn, devstack, fleet, http, out)
            return await soak(run)
    finally:
        with anyio.CancelScope(shield=True):
            await fleet.stop()
            await stop_process(devstack.process)


async def soak(run: Run) -> Verdict:
    config = run.config
    users = await _prepare_users(run)
    rng = config.rng("jobs")
    specs = [load.job_spec(rng, users) for _ in range(config.jobs)]
    response = await run.http.post("/admin/faults", json=config.faults())
    response.raise_for_status()
    submitter = load.Submitter(run.dsn)
    try:
        await chaos_phase(run, submitter, specs)
    finally:
        await submitter.close()
    # Every worker stopped first: until then one may still call Gemini and finish a job (after a
    # spent budget, in the grace period of the final SIGTERM), and that call belongs in the log.
    run.disruptions.exit_codes = await run.fleet.stop()
    gemini = (await run.http.get("/admin/gemini/requests")).raise_for_status().json()
    snapshot = await read_snapshot(run.dsn)
    return judge(snapshot, _facts(run, users, submitter, gemini))


async def _prepare_users(run: Run) -> list[load.User]:
    conn = await asyncpg.connect(run.dsn)
    try:
        users = await load.make_users(conn, run.config.users, run.config.rng("users"))
        await load.upload_photos(conn, run.http, users, run.config.large_photo_every)
        await run.fleet.start()
        await load.make_pages(conn, users, within=120)
    finally:
        await conn.close()
    run.out(f"{len(users)} users, each with a photo and a page to edit; {run.config.workers} workers up")
    return users


def _facts(run: Run, users: list[load.User], submitter: load.Submitter,
           gemini: list[dict[str, Any]]) -> Facts:
    d, c = run.disruptions, run.config
    photos = {load.PHOTO.read_bytes(), load.large_photo()}
    logs = sorted(run.run_dir.glob("w*-gen*.log"))
    return Facts(
        start_balances={u.id: u.start_balance for u in users},
        submitted_tokens=set(submitter.submitted), kills=list(run.fleet.kills),
        crashes=d.crashes, timed_out=d.timed_out, exit_codes=d.exit_codes,
        started={log.stem for log in logs if _has_started(log)}, restart=d.restart,
        fleet_down=fleet_down(logs, run.fleet.kills, time.time()),
        lease_seconds=c.lease_seconds, sweep_seconds=c.sweep_seconds, margin_seconds=c.margin_seconds,
        storage_root=run.devstack.data_dir / "storage", photo_sha256s=frozenset(
            hashlib.sha256(imaging.prepare_input_photo(p)).hexdigest() for p in photos),
        gemini=gemini, claims_by_source=claims_by_source(logs, d.restart[0] if d.restart else None),
        stalls=d.stalls, realtime_events=d.realtime_events, gemini_history=gemini_history(c))


def _has_started(log: Path) -> bool:
    """The worker got as far as its main loop (its signal handlers are installed by then)."""
    return '"worker_starting"' in log.read_text(errors="replace")


def _started_at(log: Path) -> float | None:
    """When the worker could first sweep (epoch), from its ``pipeline_ready`` JSON line: its
    sweeper starts right after; before it, a start-up on a busy machine loads for many seconds."""
    for line in log.read_text(errors="replace").splitlines():
        if '"pipeline_ready"' in line:
            return datetime.fromisoformat(json.loads(line)["time"]).timestamp()
    return None


def fleet_down(logs: list[Path], kills: list[Kill], now: float) -> list[tuple[float, float]]:
    """The windows in which no worker was up (started, not yet killed): nobody could sweep then.

    With kills every few seconds and a start-up that takes as long on a loaded machine, every
    worker can be down at once; a lease can only be reaped once one of them is back."""
    killed = {kill.worker_id: kill.at for kill in kills}
    up = sorted((start, killed.get(log.stem, now)) for log in logs
                if (start := _started_at(log)) is not None)
    down, covered = [], up[0][1] if up else now
    for start, end in up[1:]:
        if start > covered:
            down.append((covered, start))
        covered = max(covered, end)
    return down


# --- the chaos ----------------------------------------------------------------------------------


async def chaos_phase(run: Run, submitter: load.Submitter, specs: list[load.JobSpec]) -> None:
    """Submit in bursts while killing, cutting and restarting; until every job ended or the budget."""
    config, inserted = run.config, anyio.Event()
    deadline = time.monotonic() + config.budget_seconds

    async def insert() -> None:
        await load.submit_in_bursts(submitter, specs, config.insert_seconds, config.rng("bursts"))
        inserted.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(insert)
        tg.start_soon(_kill_loop, run)
        tg.start_soon(_cut_loop, run)
        tg.start_soon(_restart_once, run, config.restart_at * config.insert_seconds)
        tg.start_soon(_reject_key_once, run, config.key_reject_at * config.insert_seconds)
        tg.start_soon(_probe_loop, run)
        tg.start_soon(_realtime_probe, run)
        await _wait_until_done(run, submitter, inserted, deadline)
        tg.cancel_scope.cancel()


async def _kill_loop(run: Run) -> None:
    rng, low_high = run.config.rng("kills"), run.config.kill_every
    while True:
        await anyio.sleep(rng.uniform(*low_high))
        run.disruptions.crashes += await run.fleet.revive_crashed()
        slot = rng.randrange(run.fleet.size)
        if slot in run.fleet.working():  # else this round kills nobody: see WorkerFleet.working
            await run.fleet.kill_and_restart(slot)


async def _cut_loop(run: Run) -> None:
    rng, low_high = run.config.rng("cuts"), run.config.cut_every
    while True:
        await anyio.sleep(rng.uniform(*low_high))
        try:
            (await run.http.post("/admin/realtime/cut")).raise_for_status()
            run.disruptions.cuts += 1
        except httpx.HTTPError:
            run.disruptions.cut_errors += 1


async def _restart_once(run: Run, after: float) -> None:
    await anyio.sleep(after)
    run.out("restarting Postgres (pg_ctl restart -m fast)")
    run.disruptions.restart = await restart_postgres(run.pg)
    run.out(f"Postgres back after {run.disruptions.restart[1]:.2f} s")


async def _reject_key_once(run: Run, after: float) -> None:
    """Gemini refuses the key (401) for ``key_reject_seconds``, then takes it again: the workers
    pause claiming, give jobs back uncounted, and resume by themselves."""
    await anyio.sleep(after)
    seconds = run.config.key_reject_seconds
    run.out(f"Gemini rejects the API key (401) for {seconds:g} s")
    (await run.http.post("/admin/faults", json={"gemini_status": 401})).raise_for_status()
    await anyio.sleep(seconds)
    (await run.http.post("/admin/faults", json={"gemini_status": None})).raise_for_status()
    run.out("Gemini accepts the API key again")


async def _probe_loop(run: Run) -> None:
    """Time the stack (devstack + Postgres) every PROBE_EVERY s with the call a worker's /ready
    makes; a call slower than STALL_SECONDS, or a gap between calls (this process starved), is a
    stall: time in which no worker could have recovered anything."""
    last_end = time.time()
    while True:
        await anyio.sleep(PROBE_EVERY)
        began = time.time()
        if began - last_end > PROBE_EVERY + STALL_SECONDS:
            run.disruptions.stalls.append((last_end, began))
        with contextlib.suppress(httpx.HTTPError):
            await run.http.post("/rest/v1/rpc/worker_reap_expired", json={"p_limit": 0})
        last_end = time.time()
        if last_end - began > STALL_SECONDS:
            run.disruptions.stalls.append((began, last_end))


async def _realtime_probe(run: Run) -> None:
    """Subscribe like a worker does and note when each job INSERT event arrives."""
    events = run.disruptions.realtime_events

    def wake(job_id: UUID | None, _source: str) -> None:
        if job_id is not None:
            events.append(time.time())

    settings = ListenerSettings(url=run.devstack.url, key=run.devstack.service_key,
                                rebuild_after_seconds=2.0, backoff_initial_seconds=0.1,
                                backoff_max_seconds=1.0, client_initial_backoff_seconds=0.2)
    await Listener(settings, wake, Metrics(), RealtimeLink()).run()


async def _wait_until_done(run: Run, submitter: load.Submitter, inserted: anyio.Event,
                           deadline: float) -> None:
    started, last_report = time.monotonic(), 0.0
    while time.monotonic() < deadline:
        await anyio.sleep(1.0)
        counts = await _statuses(run.dsn)
        if time.monotonic() - last_report >= PROGRESS_EVERY:
            last_report = time.monotonic()
            _progress(run, submitter, counts, time.monotonic() - started)
        unfinished = counts is None or counts.get("queued", 0) + counts.get("running", 0) > 0
        if inserted.is_set() and run.disruptions.restart is not None and not unfinished:
            return
    run.disruptions.timed_out = True


async def _statuses(dsn: str) -> dict[str, int] | None:
    """Jobs by status, or None while the database is away."""
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except load.DB_ERRORS:
        return None
    try:
        rows = await conn.fetch("select status::text, count(*) from public.jobs group by 1")
    except load.DB_ERRORS:
        return None
    finally:
        await conn.close()
    return {r[0]: r[1] for r in rows}


def _progress(run: Run, submitter: load.Submitter, counts: dict[str, int] | None, elapsed: float) -> None:
    shown = ", ".join(f"{k} {v}" for k, v in sorted((counts or {}).items())) or "database away"
    run.out(f"  {elapsed:5.0f} s  submitted {len(submitter.submitted)}/{run.config.jobs}  {shown}  "
            f"kills {len(run.fleet.kills)}  cuts {run.disruptions.cuts}")


# --- the report ---------------------------------------------------------------------------------


def _report(config: ChaosConfig, verdict: Verdict, seconds: float) -> str:
    faults = config.faults()
    lines = [
        "",
        f"chaos soak — seed {config.seed}, {config.jobs} jobs, {config.workers} workers, {seconds:.0f} s",
        f"command: {config.command()}",
        f"workers: LEASE_SECONDS={config.lease_seconds} SWEEP_INTERVAL_SECONDS={config.sweep_seconds:g} "
        f"MAX_CONCURRENT_JOBS={config.max_concurrent_jobs} GEMINI_TIMEOUT_SECONDS="
        f"{config.gemini_timeout_seconds:g} CONFIG_PAUSE_SECONDS={config.config_pause_seconds:g}",
        f"faults: realtime drop {faults['realtime_drop_fraction']:.0%}, sockets cut every "
        f"{config.cut_every[0]:g}-{config.cut_every[1]:g} s; Gemini 429 5 %, 503 5 %, slow 2 % "
        f"({config.gemini_slow_seconds:g} s), safety 2 %; kill -9 every {config.kill_every[0]:g}-"
        f"{config.kill_every[1]:g} s; one Postgres restart at {config.restart_at:.0%} of the "
        f"{config.insert_seconds:g} s insert phase; Gemini hangs {config.gemini_hang_fraction:.0%}, "
        f"rejects the key (401) for {config.key_reject_seconds:g} s at {config.key_reject_at:.0%} of it; "
        f"Storage downloads drip (a byte every {config.drip_seconds:g} s) {config.drip_fraction:.0%}; "
        f"every {config.large_photo_every}th user's photo is large; "
        f"JOB_TIMEOUT_SECONDS={config.job_timeout_seconds:g}",
        "",
        render(verdict),
        "",
        f"chaos soak {'PASSED' if verdict.ok else 'FAILED'} (seed {config.seed})",
    ]
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> ChaosConfig:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    defaults = ChaosConfig()
    parser.add_argument("--jobs", type=int, default=defaults.jobs)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--users", type=int, default=defaults.users)
    parser.add_argument("--insert-seconds", type=float, default=defaults.insert_seconds,
                        help="how long the bursts of submissions are spread over")
    parser.add_argument("--budget-seconds", type=float, default=defaults.budget_seconds,
                        help="give up waiting for the jobs after this long (they count as lost)")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs, storage)")
    args = parser.parse_args(argv)
    known = {f.name for f in fields(ChaosConfig)}
    return ChaosConfig(**{k: v for k, v in vars(args).items() if k in known})


def main(argv: list[str] | None = None) -> int:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure("pretty", "WARNING", [])  # the harness's own Realtime probe logs every cut
    result = anyio.run(run_chaos, config)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
