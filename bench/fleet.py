"""A fleet under a Gemini quota, side by side: today's worker vs the fleet's budget (issue 18).

``uv run python -m bench.fleet [Q] [BURST] [SLOTS]`` runs two scenarios at once, each on its own
scratch database, its own devstack (in this process) and its own fake Gemini key with a quota of
Q requests per minute and 2 s per generation: 3 worker processes (MAX_CONCURRENT_JOBS=SLOTS,
default 2, the pipeline processor), a burst of BURST jobs from user A, then 5 jobs of user B 10 s
later. ``FLEET_CLAIM_AHEAD_SECONDS`` sets the fleet's GEMINI_CLAIM_AHEAD_SECONDS (else its default).

* today: the worker as of BASELINE (``git archive``; a 429 uses an attempt, claims oldest first),
  on the same schema with worker_claim_jobs as it was (0002);
* fleet: this tree, with GEMINI_RPM=Q (one budget in Postgres), deferrals and fair claims.

Printed: drain time vs the quota bound (jobs / Q), jobs failed by rate limits, 429s as a share of
Gemini requests, user B's waits, and the instance count the CREMA rule (deploy/cloudrun/crema.yaml)
would choose over time.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import os
import statistics
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from bench.harness import (
    Child,
    Worker,
    base_env,
    free_port,
    postgres_server,
    scratch_database,
    temp_folder,
)
from realtime_worker_devstack import users
from realtime_worker_devstack.faults import Faults
from realtime_worker_devstack.server import Devstack, running

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "1991188"  # this branch's start: the worker before issue 18
GENERATION_SECONDS = 2.0
WORKERS, SLOTS = 3, 2  # slots per worker: the third argument changes it
B_JOBS, B_AFTER = 5, 10.0
SAMPLE_EVERY = 5.0
PARAMS = '{"text_prompt": "a lighthouse by the sea", "title": "Fleet"}'


# --- the CREMA rule --------------------------------------------------------------------------


def scaled_object() -> dict[str, Any]:
    """The one ScaledObject of deploy/cloudrun/crema.yaml."""
    config = yaml.safe_load((ROOT / "deploy" / "cloudrun" / "crema.yaml").read_text("utf-8"))
    [scaled] = config["spec"]["scaledObjects"]
    spec: dict[str, Any] = scaled["spec"]
    return spec


def keda_instances(metric: float, spec: dict[str, Any]) -> int:
    """KEDA's AverageValue rule for one trigger: ceil(metric / target), within min..max."""
    target = float(spec["triggers"][0]["metadata"]["targetQueryValue"])
    wanted = math.ceil(metric / target)
    return max(int(spec["minReplicaCount"]), min(int(spec["maxReplicaCount"]), wanted))


def scaler_query(spec: dict[str, Any]) -> str:
    [trigger] = spec["triggers"]
    query: str = trigger["metadata"]["query"]
    return query


# --- a scenario --------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    env: dict[str, str]  # worker settings beyond the stack's
    pythonpath: str | None = None  # the baseline's tree
    old_claims: str | None = None  # SQL putting back the baseline's worker_claim_jobs
    slots: int = SLOTS
    timeline: list[tuple[float, int]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)


def baseline_tree(folder: Path) -> tuple[str, str]:
    """The baseline's worker package (extracted) and its migration 0002 (the claim as it was)."""
    archive = subprocess.run(["git", "archive", BASELINE, "realtime_worker"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    claims = (folder / "realtime_worker/sql/migrations/0002_claims_in_plpgsql.sql").read_text("utf-8")
    return str(folder), claims


def spawn_workers(stack: Devstack, scenario: Scenario, folder: Path) -> list[Worker]:
    workers = []
    for n in range(WORKERS):
        port = free_port()
        env = {**base_env(), **stack.env(), "PORT": str(port), "LOG_FORMAT": "json",
               "LOG_LEVEL": "INFO", "WORKER_ID": f"{scenario.name}-{n}",
               "MAX_CONCURRENT_JOBS": str(scenario.slots), "IMAGE_THREADS": "1", **scenario.env}
        env.pop("DATABASE_URL", None)
        if scenario.pythonpath:
            env["PYTHONPATH"] = scenario.pythonpath
        workers.append(Worker(spawn(env, scenario.pythonpath or str(ROOT),
                                    folder / f"{scenario.name}-{n}.log"), port))
    return workers


def spawn(env: dict[str, str], cwd: str, log: Path) -> Child:
    """``python -m realtime_worker run`` in ``cwd``: ``-m`` looks there first, so the baseline's
    tree is the one imported (ahead of this checkout, installed in editable mode)."""
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "realtime_worker", "run"], env=env, cwd=cwd,
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Child(process, log)


async def load(conn: asyncpg.Connection, burst: int) -> tuple[uuid.UUID, uuid.UUID]:
    a, b = await users.create(conn, 10_000), await users.create(conn, 10_000)
    async with conn.transaction():
        await conn.execute("insert into public.jobs (user_id, params_json) select $1, $2::jsonb"
                           " from generate_series(1, $3)", a, PARAMS, burst)
    await asyncio.sleep(B_AFTER)
    async with conn.transaction():
        await conn.execute("insert into public.jobs (user_id, params_json) select $1, $2::jsonb"
                           " from generate_series(1, $3)", b, PARAMS, B_JOBS)
    return a, b


async def sample_scaler(conn: asyncpg.Connection, scenario: Scenario, started: float,
                        done: asyncio.Event) -> None:
    spec = scaled_object()
    while not done.is_set():
        metric = float(await conn.fetchval(scaler_query(spec)))
        scenario.timeline.append((time.monotonic() - started, keda_instances(metric, spec)))
        await asyncio.sleep(SAMPLE_EVERY)


async def wait_finished(conn: asyncpg.Connection, total: int, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        finished = await conn.fetchval(
            "select count(*) from public.jobs where status in ('succeeded', 'failed')")
        if finished == total:
            return
        await asyncio.sleep(1.0)


async def open_stack(stacks: contextlib.AsyncExitStack, admin: str, scenario: Scenario, q: int,
                     folder: Path) -> Devstack:
    """The scenario's database and devstack (opened one after the other: the schema's roles are
    the server's, and two installs at once would race for them)."""
    dsn = await stacks.enter_async_context(scratch_database(admin, f"rw_fleet_{scenario.name}"))
    faults = Faults(seed=18, gemini_quota_per_minute=q, gemini_latency_seconds=GENERATION_SECONDS)
    stack = await stacks.enter_async_context(
        running(database_dsn=dsn, data_dir=folder / scenario.name, faults=faults))
    if scenario.old_claims:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(scenario.old_claims)
        finally:
            await conn.close()
    return stack


async def run_scenario(stack: Devstack, scenario: Scenario, q: int, burst: int, folder: Path) -> None:
    conn = await asyncpg.connect(stack.database_dsn)
    try:
        workers = spawn_workers(stack, scenario, folder)
        try:
            await asyncio.gather(*(ready(w) for w in workers))
            await drive(conn, stack, scenario, q, burst)
        finally:
            await asyncio.gather(*(w.child.stop() for w in workers))
    finally:
        await conn.close()


async def ready(worker: Worker, within: float = 120.0) -> None:
    """/ready answers 200. Asked from a thread: the devstack the worker checks runs on this
    process's event loop, which a blocking request would stall."""
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(worker.answers, "/ready"):
        if time.monotonic() > deadline or not worker.child.alive():
            raise RuntimeError(f"a worker did not get ready:\n{worker.child.tail()}")
        await asyncio.sleep(0.5)


async def drive(conn: asyncpg.Connection, stack: Devstack, scenario: Scenario, q: int,
                burst: int) -> None:
    total = burst + B_JOBS
    started, done = time.monotonic(), asyncio.Event()
    watcher = await asyncpg.connect(stack.database_dsn)
    sampler = asyncio.create_task(sample_scaler(watcher, scenario, started, done))
    try:
        _, b = await load(conn, burst)
        await wait_finished(conn, total, within=max(240.0, 4 * total * 60 / q))
    finally:
        done.set()
        await sampler
        await watcher.close()
    scenario.result = await outcome(conn, b, total, q)
    scenario.result["gemini_requests"] = stack.gemini.quota.requests
    scenario.result["gemini_429"] = stack.gemini.quota.refused


async def outcome(conn: asyncpg.Connection, b: uuid.UUID, total: int, q: int) -> dict[str, Any]:
    rows = await conn.fetch("""
        select user_id, status::text, error_code, deferrals, attempts,
               extract(epoch from started_at - created_at) as to_claim,
               extract(epoch from ended_at - created_at) as to_end, created_at, ended_at
        from public.jobs""")
    first = min(r["created_at"] for r in rows)
    ended = [r["ended_at"] for r in rows if r["ended_at"] is not None]
    succeeded = [float(r["to_end"]) for r in rows if r["status"] == "succeeded"]
    b_rows = [r for r in rows if r["user_id"] == b]
    return {
        "jobs": total, "finished": len(ended),
        "drain": (max(ended) - first).total_seconds() if ended else math.nan,
        "bound": total * 60 / q,
        "rate_failed": sum(r["status"] == "failed" and r["error_code"] in ("rate_limited", "daily_quota")
                           for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows),
        "deferrals": sum(r["deferrals"] for r in rows),
        "job_seconds": min(succeeded) if succeeded else math.nan,
        "b_to_claim": [float(r["to_claim"]) for r in b_rows if r["to_claim"] is not None],
        "b_to_end": [float(r["to_end"]) for r in b_rows if r["to_end"] is not None],
    }


# --- the report --------------------------------------------------------------------------------


def b_waits(r: dict[str, Any]) -> str:
    """B's longest time to done, less one job's own duration, in job durations."""
    if not r["b_to_end"]:
        return "B unfinished"
    wait = max(r["b_to_end"]) - r["job_seconds"]
    return (f"{wait:.2f} s = {wait / r['job_seconds']:.2f} job durations (claimed after at most "
            f"{max(r['b_to_claim']):.1f} s; median done {statistics.median(r['b_to_end']):.1f} s)")


def b_each(r: dict[str, Any]) -> str:
    """Each of B's jobs: time to done less one job's duration, in job durations, in order."""
    if not r["b_to_end"]:
        return "B unfinished"
    waits = sorted((t - r["job_seconds"]) / r["job_seconds"] for t in r["b_to_end"])
    return ", ".join(f"{w:.2f}" for w in waits)


def timeline(scenario: Scenario) -> str:
    points, last = [], None
    for at, count in scenario.timeline:
        if count != last:
            points.append(f"{at:.0f}s:{count}")
            last = count
    return " ".join(points) + f" (sampled every {SAMPLE_EVERY:g} s)"


def report(scenarios: list[Scenario], q: int, burst: int, took: float) -> None:
    print(f"quota Q = {q} requests/min per key, generation {GENERATION_SECONDS:g} s; {WORKERS} workers"
          f" x {scenarios[0].slots} slots; user A: {burst} jobs at t=0, user B: {B_JOBS} jobs at"
          f" t={B_AFTER:g} s; both scenarios ran at once in {took:.0f} s")
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("jobs finished / total", lambda r: f"{r['finished']} / {r['jobs']}"),
        ("drain time vs quota bound", lambda r: f"{r['drain']:.1f} s vs {r['bound']:.1f} s "
                                                f"({(r['drain'] / r['bound'] - 1) * 100:+.0f} %)"),
        ("jobs failed by rate limits", lambda r: f"{r['rate_failed']} (all failures: {r['failed']})"),
        ("429s / Gemini requests", lambda r: f"{r['gemini_429']} / {r['gemini_requests']} = "
                                             f"{100 * r['gemini_429'] / max(r['gemini_requests'], 1):.1f} %"),
        ("deferrals (sum)", lambda r: str(r["deferrals"])),
        ("one job's duration (fastest)", lambda r: f"{r['job_seconds']:.2f} s"),
        ("user B's longest wait", b_waits),
        ("user B's waits, in job durations", b_each),
    ]
    for label, cell in rows:
        print(f"{label:<30}" + "".join(f" | {s.name}: {cell(s.result)}" for s in scenarios))
    for s in scenarios:
        print(f"{'CREMA instances, ' + s.name:<30} | {timeline(s)}")


def ahead() -> dict[str, str]:
    """GEMINI_CLAIM_AHEAD_SECONDS for the fleet's workers, when the bench is given one."""
    value = os.environ.get("FLEET_CLAIM_AHEAD_SECONDS")
    return {"GEMINI_CLAIM_AHEAD_SECONDS": value} if value else {}


async def main(q: int, burst: int, slots: int = SLOTS) -> None:
    with temp_folder() as folder:
        path, claims = baseline_tree(folder / "baseline")
        scenarios = [
            Scenario("today", {}, pythonpath=path, old_claims=claims, slots=slots),
            Scenario("fleet", {"GEMINI_RPM": str(q), "GEMINI_MAX_CONCURRENT": str(WORKERS * slots),
                               **ahead()}, slots=slots),
        ]
        async with postgres_server(folder) as admin, contextlib.AsyncExitStack() as stacks:
            opened = [await open_stack(stacks, admin, s, q, folder) for s in scenarios]
            started = time.monotonic()
            await asyncio.gather(*(run_scenario(stack, s, q, burst, folder)
                                   for stack, s in zip(opened, scenarios, strict=True)))
            report(scenarios, q, burst, time.monotonic() - started)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30,
                     int(sys.argv[2]) if len(sys.argv) > 2 else 55,
                     int(sys.argv[3]) if len(sys.argv) > 3 else SLOTS))
