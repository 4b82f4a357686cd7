"""The chaos soak's verdict: what the database, Storage and the Gemini log say after the run.

Everything is read after the workers stopped: ``public.jobs``, ``public.assets``,
``storage.objects`` (and the stored files), ``public.credit_events``, ``public.credits``, the
harness's ``chaos.transitions`` audit and the fake Gemini's request log.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.chaos_load import kind_of, token_of
from bench.chaos_stack import Kill
from realtime_worker.jobs import worker_of

TERMINAL = frozenset({"succeeded", "failed"})
OUTPUT_KINDS = {"edge_map": ("intermediates", "edge.png"), "thumbnail": ("intermediates", "thumbnail.png"),
                "pdf": ("artifacts", "coloring_page.pdf")}
TOKEN = re.compile(r"chaos[0-9a-f]{12}")
LEASE_EXPIRED = "lease_expired"


# --- what was read ------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRow:
    id: uuid.UUID
    user_id: uuid.UUID
    status: str
    kind: str
    token: str | None
    attempts: int
    max_attempts: int
    credits_charged: int
    refunded: bool
    error_code: str | None


@dataclass(frozen=True)
class Transition:
    job_id: uuid.UUID
    old_status: str | None
    new_status: str
    locked_by: str | None  # the worker id of the claim's owner (``jobs.worker_of``)
    error_code: str | None
    at: float
    old_locked_until: float | None = None  # of a reap: when the lease had expired


@dataclass
class Snapshot:
    jobs: dict[uuid.UUID, JobRow]
    assets: dict[uuid.UUID, list[asyncpg.Record]]
    objects: set[tuple[str, str]]
    events: list[asyncpg.Record]
    balances: dict[uuid.UUID, int]
    transitions: dict[uuid.UUID, list[Transition]]


async def read_snapshot(dsn: str) -> Snapshot:
    conn = await asyncpg.connect(dsn)
    try:
        jobs = {r["id"]: JobRow(r["id"], r["user_id"], r["status"], kind_of(r["params_json"]),
                                token_of(r["params_json"]), r["attempts"], r["max_attempts"],
                                r["credits_charged"], r["refunded_at"] is not None, r["error_code"])
                for r in await conn.fetch("select *, status::text as status from public.jobs")}
        assets: dict[uuid.UUID, list[asyncpg.Record]] = defaultdict(list)
        for row in await conn.fetch("select kind::text as kind, storage_path, hash from public.assets"
                                    " where kind in ('edge_map', 'thumbnail', 'pdf')"):
            assets[uuid.UUID(row["storage_path"].split("/")[1])].append(row)  # {user}/{job}/file
        objects = {(r[0], r[1]) for r in await conn.fetch(
            "select bucket_id, name from storage.objects where bucket_id in ('intermediates', 'artifacts')")}
        events = await conn.fetch("select user_id, job_id, delta, reason from public.credit_events")
        balances = {r[0]: r[1] for r in await conn.fetch("select user_id, balance from public.credits")}
        transitions: dict[uuid.UUID, list[Transition]] = defaultdict(list)
        for r in await conn.fetch("select * from chaos.transitions order by at, id"):
            owner = r["new_locked_by"]  # one claim's owner; the checks follow its worker
            transitions[r["job_id"]].append(Transition(r["job_id"], r["old_status"], r["new_status"],
                                                       owner and worker_of(owner), r["error_code"],
                                                       r["at"].timestamp(), _epoch(r["old_locked_until"])))
    finally:
        await conn.close()
    return Snapshot(jobs, dict(assets), objects, list(events), balances, dict(transitions))


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


# --- the verdict --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    value: str
    expected: str
    ok: bool


@dataclass
class Facts:
    """What the harness itself knows about the run."""

    start_balances: dict[uuid.UUID, int]
    submitted_tokens: set[str]
    kills: list[Kill]
    crashes: list[str]
    timed_out: bool
    exit_codes: dict[str, int | None]  # of the last workers, stopped with SIGTERM at the end
    started: set[str]  # workers whose log shows they reached their main loop
    restart: tuple[float, float] | None  # (epoch at start, seconds away)
    lease_seconds: float
    sweep_seconds: float
    margin_seconds: float
    storage_root: Path
    photo_sha256s: frozenset[str]  # what Gemini gets of each user photo (the sample, the large one)
    gemini: list[dict[str, Any]]
    claims_by_source: dict[str, Counter[str]]  # "before"/"after" the restart → source → claims
    stalls: list[tuple[float, float]]  # (from, to) epoch: the stack answered nothing for > STALL
    fleet_down: list[tuple[float, float]]  # (from, to) epoch: no worker up (all killed or starting)
    realtime_events: list[float]  # epoch of each INSERT event the harness's own subscriber got
    gemini_history: int  # how many requests the fake keeps

    def outages(self) -> list[tuple[float, float]]:
        """Stalls of the stack and the Postgres restart: time in which nothing can recover."""
        restart = [(self.restart[0], self.restart[0] + self.restart[1])] if self.restart else []
        return [*self.stalls, *restart]

    def unswept(self) -> list[tuple[float, float]]:
        """The outages and the windows with no worker up, merged: time in which no lease can be
        reaped."""
        merged: list[tuple[float, float]] = []
        for start, end in sorted([*self.outages(), *self.fleet_down]):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged


@dataclass
class Verdict:
    checks: list[Check] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def check(self, name: str, value: int | float, expected: str, ok: bool) -> None:
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        self.checks.append(Check(name, shown, expected, ok))

    def zero(self, name: str, found: list[Any] | int, examples: bool = True) -> None:
        count = found if isinstance(found, int) else len(found)
        label = name
        if examples and not isinstance(found, int) and found:
            label += f" (e.g. {found[0]})"
        self.check(label, count, "0", count == 0)

    def figure(self, name: str, value: str) -> None:
        self.figures.append((name, value))


def judge(snap: Snapshot, facts: Facts) -> Verdict:
    verdict = Verdict()
    check_jobs(verdict, snap, facts)
    check_outputs(verdict, snap, facts)
    check_refunds(verdict, snap, facts)
    check_recovery(verdict, snap, facts)
    check_generator(verdict, snap, facts)
    check_process(verdict, facts)
    return verdict


def check_jobs(verdict: Verdict, snap: Snapshot, facts: Facts) -> None:
    jobs = list(snap.jobs.values())
    verdict.zero("lost jobs (not succeeded/failed)", [j.id for j in jobs if j.status not in TERMINAL])
    tokens = Counter(j.token for j in jobs if j.token)
    verdict.zero("submitted jobs missing or duplicated",
                 [t for t in facts.submitted_tokens if tokens[t] != 1])
    verdict.zero("jobs over max_attempts", [j.id for j in jobs if j.attempts > j.max_attempts])
    by_status = Counter(j.status for j in jobs)
    kinds = Counter(f"{j.kind}/{j.status}" for j in jobs)
    verdict.figure("jobs", f"{len(jobs)} ({', '.join(f'{k} {v}' for k, v in sorted(by_status.items()))})")
    verdict.figure("by kind", ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    codes = Counter(j.error_code for j in jobs if j.status == "failed")
    verdict.figure("failed by error code", ", ".join(f"{k} {v}" for k, v in codes.most_common()) or "-")


def completions(transitions: list[Transition]) -> int:
    return sum(1 for t in transitions if t.new_status == "succeeded")


def check_outputs(verdict: Verdict, snap: Snapshot, facts: Facts) -> None:
    succeeded = [j for j in snap.jobs.values() if j.status == "succeeded"]
    failed = [j for j in snap.jobs.values() if j.status == "failed"]
    verdict.zero("jobs completed more than once (audit)",
                 [j for j, ts in snap.transitions.items() if completions(ts) > 1])
    verdict.zero("succeeded jobs without exactly one edge_map+thumbnail+pdf",
                 [j.id for j in succeeded if sorted(a["kind"] for a in snap.assets.get(j.id, []))
                  != sorted(OUTPUT_KINDS)])
    verdict.zero("failed jobs with output asset rows", [j.id for j in failed if snap.assets.get(j.id)])
    verdict.zero("succeeded jobs whose stored objects do not match their asset rows",
                 [j.id for j in succeeded if not objects_match(j, snap, facts.storage_root)])
    orphans = sum(1 for j in failed for bucket, file in OUTPUT_KINDS.values()
                  if (bucket, f"{j.user_id}/{j.id}/{file}") in snap.objects)
    verdict.figure("objects left by failed jobs (uploaded before a lost lease)", str(orphans))


def objects_match(job: JobRow, snap: Snapshot, root: Path) -> bool:
    """Each output's asset row holds its bucket-relative name (as the app signs it), and it has its
    storage.objects row and its file, whose hash is the asset row's."""
    for row in snap.assets.get(job.id, []):
        bucket, file = OUTPUT_KINDS[row["kind"]]
        name = f"{job.user_id}/{job.id}/{file}"
        path = root / bucket / name
        if row["storage_path"] != name or (bucket, name) not in snap.objects or not path.is_file():
            return False
        if hashlib.sha256(path.read_bytes()).hexdigest() != row["hash"]:
            return False
    return True


def job_events(snap: Snapshot, sign: int) -> dict[uuid.UUID, list[asyncpg.Record]]:
    """The ledger's rows of each job: its charge (``sign`` -1) or its refund (+1)."""
    events: dict[uuid.UUID, list[asyncpg.Record]] = defaultdict(list)
    for event in snap.events:
        if event["job_id"] is not None and event["delta"] * sign > 0:
            events[event["job_id"]].append(event)
    return events


def check_refunds(verdict: Verdict, snap: Snapshot, facts: Facts) -> None:
    events, charges = job_events(snap, +1), job_events(snap, -1)
    verdict.zero("jobs not charged exactly once in the ledger", [
        j.id for j in snap.jobs.values()
        if [e["delta"] for e in charges.get(j.id, [])] != [-1]])
    bad_failed = [j.id for j in snap.jobs.values() if j.status == "failed" and not refunded_once(
        j, events.get(j.id, []))]
    verdict.zero("failed jobs not refunded exactly once", bad_failed)
    verdict.zero("succeeded jobs refunded", [j.id for j in snap.jobs.values()
                                             if j.status == "succeeded" and (j.refunded or j.id in events)])
    verdict.zero("refunds of unknown jobs", [k for k in events if k not in snap.jobs])
    verdict.zero("users whose ledger does not add up to their balance", [
        user for user in facts.start_balances
        if sum(e["delta"] for e in snap.events if e["user_id"] == user) != snap.balances.get(user)])
    verdict.zero("users whose balance is not start - jobs + refunds", ledger_mismatches(snap, facts))
    verdict.figure("refunds", f"{sum(len(v) for v in events.values())} credit_events rows "
                   f"(reason generation_failed) for {len(facts.start_balances)} users")


def refunded_once(job: JobRow, events: list[asyncpg.Record]) -> bool:
    """refunded_at set and one credit_events row: generation_failed, delta = credits charged."""
    return (job.refunded and len(events) == 1 and events[0]["reason"] == "generation_failed"
            and events[0]["delta"] == job.credits_charged)


def ledger_mismatches(snap: Snapshot, facts: Facts) -> list[str]:
    """start - jobs submitted + refunds == credits.balance, and events agree with refunded_at."""
    submitted = Counter(j.user_id for j in snap.jobs.values())
    refunds: Counter[uuid.UUID] = Counter()
    for event in snap.events:  # the sign-up and purchase rows are in ``start`` already
        if event["job_id"] is not None and event["delta"] > 0:
            refunds[event["user_id"]] += event["delta"]
    wrong = []
    for user, start in facts.start_balances.items():
        expected = start - submitted[user] + refunds[user]
        if snap.balances.get(user) != expected:
            wrong.append(f"{user}: {start} - {submitted[user]} + {refunds[user]}"
                         f" != {snap.balances.get(user)}")
    return wrong


# --- recovery after kills -----------------------------------------------------------------------


@dataclass(frozen=True)
class Recovery:
    """A job a killed worker held: seconds from max(kill, claim) until it was back in the queue
    (its lease reaped) or ended, and until it was claimed again or ended; None: never."""

    job_id: uuid.UUID
    kill: Kill
    released: float | None
    reclaimed: float | None
    frozen: float  # of ``released``, seconds stalled, Postgres restarting or no worker up


def recoveries(snap: Snapshot, facts: Facts) -> list[Recovery]:
    """Every job a killed worker held: claimed before its death (and not given up by it before),
    or whose claim committed after it."""
    found = []
    for kill in facts.kills:
        for job_id, transitions in snap.transitions.items():
            for index, claim in enumerate(transitions):
                if claim.new_status == "running" and claim.locked_by == kill.worker_id:
                    after = transitions[index + 1:]
                    if not after or after[0].at > kill.at:
                        found.append(_recovery(job_id, kill, claim, after, facts))
    return found


def _recovery(job_id: uuid.UUID, kill: Kill, claim: Transition, after: list[Transition],
              facts: Facts) -> Recovery:
    start = max(kill.at, claim.at)
    released = next((t.at for t in after if t.new_status != "running"
                     or t.locked_by != kill.worker_id), None)
    reclaimed = next((t.at for t in after if t.new_status in TERMINAL
                      or (t.new_status == "running" and t.locked_by != kill.worker_id)), None)
    return Recovery(job_id, kill, None if released is None else released - start,
                    None if reclaimed is None else reclaimed - start,
                    0.0 if released is None else overlap(start, released, facts.unswept()))


def overlap(start: float, end: float, intervals: list[tuple[float, float]]) -> float:
    """Seconds of [start, end] covered by the (non-overlapping) intervals."""
    return sum(max(0.0, min(end, b) - max(start, a)) for a, b in intervals)


def timeline(transitions: list[Transition], kill: Kill) -> str:
    """A job's state changes, in seconds from the kill, for a report line."""
    steps = [f"{t.at - kill.at:+.2f}s {t.new_status}/{t.locked_by or '-'}/{t.error_code or '-'}"
             + (f" (lease had expired at {t.old_locked_until - kill.at:+.2f}s)"
                if t.old_locked_until and t.old_status == "running" and is_reap(t) else "")
             for t in transitions]
    return f"{kill.worker_id} killed at 0: " + "; ".join(steps)


def check_recovery(verdict: Verdict, snap: Snapshot, facts: Facts) -> None:
    found = recoveries(snap, facts)
    base = facts.lease_seconds + facts.sweep_seconds + facts.margin_seconds
    verdict.zero("killed workers' jobs never recovered", [r.job_id for r in found if r.reclaimed is None])
    late = [r for r in found if r.released is not None and r.released - r.frozen > base]
    verdict.zero("kill → job back in the queue or ended > lease + sweep + margin "
                 "(outside stalls and windows with no worker up)",
                 [f"{r.job_id} {r.released:.2f}s - {r.frozen:.2f}s stalled or unswept" for r in late
                  if r.released is not None])
    for r in late:
        verdict.figure(f"late recovery of {r.job_id}", timeline(snap.transitions[r.job_id], r.kill))
    verdict.figure("kills", f"{len(facts.kills)} (kill -9, each restarted at once under a new WORKER_ID)")
    verdict.figure("jobs held by killed workers", str(len(found)))
    released = [r.released for r in found if r.released is not None]
    net = [r.released - r.frozen for r in found if r.released is not None]
    reclaimed = [r.reclaimed for r in found if r.reclaimed is not None]
    if released:
        verdict.figure("kill → back in the queue or ended (s)",
                       f"p50 {statistics.median(released):.2f}, max {max(released):.2f}; outside stalls "
                       f"and the restart max {max(net):.2f}; bound {facts.lease_seconds:g} lease + "
                       f"{facts.sweep_seconds:g} sweep + {facts.margin_seconds:g} margin = {base:g}")
    if reclaimed:
        within = sum(1 for r in reclaimed if r <= base)
        verdict.figure("kill → claimed again or ended (s)",
                       f"p50 {statistics.median(reclaimed):.2f}, max {max(reclaimed):.2f}; {within}/"
                       f"{len(reclaimed)} within {base:g} s (the rest waited behind older queued jobs)")
    longest = max((b - a for a, b in facts.stalls), default=0.0)
    total = sum(b - a for a, b in facts.stalls)
    verdict.figure("stalls of the stack (probe unanswered > 0.5 s)",
                   f"{len(facts.stalls)}, {total:.1f} s in all, longest {longest:.1f} s")
    down = [b - a for a, b in facts.fleet_down]
    verdict.figure("windows with no worker up (all killed or still starting)",
                   f"{len(down)}, {sum(down):.1f} s in all, longest {max(down, default=0.0):.1f} s")


# --- Gemini calls -------------------------------------------------------------------------------


def calls_per_job(snap: Snapshot, gemini: list[dict[str, Any]]) -> tuple[Counter[uuid.UUID], list[str]]:
    """Gemini requests per job (by token), and the requests that match no single job."""
    by_token = {j.token: j.id for j in snap.jobs.values() if j.token}
    calls: Counter[uuid.UUID] = Counter()
    unmatched = []
    for request in gemini:
        tokens = set(TOKEN.findall(str(request.get("prompt", ""))))
        job = by_token.get(next(iter(tokens))) if len(tokens) == 1 else None
        if job is None:
            unmatched.append(",".join(sorted(tokens)) or "no token")
        else:
            calls[job] += 1
    return calls, unmatched


def image_mismatches(snap: Snapshot, gemini: list[dict[str, Any]],
                     photo_sha256s: frozenset[str]) -> list[str]:
    """Text requests carry no image; image and edit requests one (image jobs: the user's photo)."""
    kinds = {j.token: j.kind for j in snap.jobs.values() if j.token}
    wrong = []
    for request in gemini:
        tokens = TOKEN.findall(str(request.get("prompt", "")))
        kind = kinds.get(tokens[0]) if tokens else None
        hashes = list(request.get("image_sha256") or [])
        expected = 0 if kind == "text" else 1
        wrong_photo = kind == "image" and bool(hashes) and hashes[0] not in photo_sha256s
        if kind is not None and (len(hashes) != expected or wrong_photo):
            wrong.append(f"{kind} request with {len(hashes)} image(s)")
    return wrong


def check_generator(verdict: Verdict, snap: Snapshot, facts: Facts) -> None:
    calls, unmatched = calls_per_job(snap, facts.gemini)
    claims = {j: sum(1 for t in ts if t.new_status == "running") for j, ts in snap.transitions.items()}
    verdict.check("Gemini requests recorded (the log kept all of them)", len(facts.gemini),
                  f"< {facts.gemini_history}", len(facts.gemini) < facts.gemini_history)
    verdict.zero("Gemini requests matching no single job", unmatched)
    verdict.zero("requests with the wrong input image",
                 image_mismatches(snap, facts.gemini, facts.photo_sha256s))
    verdict.zero("jobs with more Gemini calls than claims",
                 [j for j, n in calls.items() if n > claims.get(j, 0)])
    verdict.zero("succeeded jobs never sent to Gemini",
                 [j.id for j in snap.jobs.values() if j.status == "succeeded" and calls[j.id] == 0])
    retries, reaps = _requeues(snap)
    held = recoveries(snap, facts)
    killed = {k.worker_id: k.at for k in facts.kills}
    by_kill = [r for r in reaps if r.claimed_by in killed and killed[r.claimed_by] <= r.at]
    by_outage = [r for r in reaps if r not in by_kill and lost_to_outage(r, facts)]
    unexplained = [r.job_id for r in reaps if r not in by_kill and r not in by_outage]
    verdict.zero("leases that expired without a kill, a stall or the Postgres restart", unexplained)
    duplicates = sum(max(0, n - 1) for n in calls.values())
    bound = retries + len(held) + len(by_outage)
    verdict.check("duplicate Gemini calls ≤ retries + jobs held at kills + leases lost to outages",
                  duplicates, f"≤ {bound}", duplicates <= bound)
    histogram = Counter(calls[j] for j in snap.jobs)
    verdict.figure("Gemini calls", f"{sum(calls.values())} for {len(snap.jobs)} jobs; per job "
                   + ", ".join(f"{k}×: {v}" for k, v in sorted(histogram.items())))
    verdict.figure("duplicate calls", f"{duplicates}; bound {bound} = {retries} retries after "
                   f"429/503/time-out/storage + {len(held)} jobs held at kills + {len(by_outage)} "
                   f"leases lost to the Postgres restart or a stall (reaped leases: {len(reaps)})")


def lost_to_outage(reap: Reap, facts: Facts) -> bool:
    """A live worker's lease can expire when it could not record an outcome while Postgres was
    restarting, or when its heartbeats could not get through a stall of a third of the lease."""
    restart = facts.outages()[len(facts.stalls):]
    if overlap(reap.claimed_at, reap.at, restart) > 0:
        return True
    return overlap(reap.claimed_at, reap.at, facts.stalls) >= facts.lease_seconds / 3


@dataclass(frozen=True)
class Reap:
    """The sweep took a lease back: whose claim it was, when it was made and when it was reaped."""

    job_id: uuid.UUID
    claimed_by: str | None
    claimed_at: float
    at: float


def is_reap(t: Transition) -> bool:
    """The sweep took an expired lease back. ``error_code`` alone does not tell: a release by the
    owner (e.g. the give-back after Gemini refused the key) keeps the code of an earlier reap,
    but it comes while the lease still runs."""
    return (t.error_code == LEASE_EXPIRED and t.new_status != "succeeded"
            and t.old_locked_until is not None and t.old_locked_until <= t.at)


def _requeues(snap: Snapshot) -> tuple[int, list[Reap]]:
    """Retries the workers scheduled, and the leases the sweep took back."""
    retries, reaps = 0, []
    for job_id, transitions in snap.transitions.items():
        claim: Transition | None = None
        for t in transitions:
            if t.new_status == "running":
                claim = t
            elif t.old_status == "running" and is_reap(t):
                reaps.append(Reap(job_id, claim.locked_by if claim else None,
                                  claim.at if claim else t.at, t.at))
            elif t.old_status == "running" and t.new_status == "queued":
                retries += 1
    return retries, reaps


# --- processes ----------------------------------------------------------------------------------


def check_process(verdict: Verdict, facts: Facts) -> None:
    verdict.check("every job ended within the time budget", 0 if facts.timed_out else 1, "1",
                  not facts.timed_out)
    verdict.zero("workers that died without being killed", facts.crashes)
    verdict.zero("started workers not exiting 0 on the final SIGTERM",
                 [f"{w}: {c}" for w, c in facts.exit_codes.items() if w in facts.started and c != 0])
    starting = [f"{w}: {c}" for w, c in facts.exit_codes.items() if w not in facts.started]
    verdict.figure("final SIGTERM", f"{len(facts.exit_codes)} workers; still starting up (no handler "
                   f"yet, ended by the signal): {', '.join(starting) or 'none'}")
    verdict.check("Postgres restarts", 1 if facts.restart else 0, "1", facts.restart is not None)
    if facts.restart is not None:
        verdict.figure("Postgres restart", f"pg_ctl restart -m fast took {facts.restart[1]:.2f} s")
        back = facts.restart[0] + facts.restart[1]
        events = sum(1 for at in facts.realtime_events if at > back)
        verdict.check("Realtime INSERT events delivered after the Postgres restart", events, "> 0",
                      events > 0)
    for phase in ("before", "after"):
        sources = facts.claims_by_source.get(phase, Counter())
        verdict.figure(f"claims by wake-up {phase} the restart",
                       ", ".join(f"{k} {v}" for k, v in sources.most_common()) or "-")


def claims_by_source(logs: list[Path], restart_at: float | None) -> dict[str, Counter[str]]:
    """``job_started`` events of the workers' JSON logs, by source, before/after the restart."""
    found: dict[str, Counter[str]] = {"before": Counter(), "after": Counter()}
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if '"job_started"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            at = datetime.fromisoformat(entry["time"]).timestamp()
            phase = "after" if restart_at is not None and at > restart_at else "before"
            found[phase][str(entry.get("source"))] += 1
    return found


def render(verdict: Verdict) -> str:
    width = max(len(c.name) for c in verdict.checks)
    lines = [f"{'invariant':<{width}}  {'found':>8}  {'expected':>8}  result", "-" * (width + 34)]
    lines += [f"{c.name:<{width}}  {c.value:>8}  {c.expected:>8}  {'ok' if c.ok else 'FAILED'}"
              for c in verdict.checks]
    lines += ["", *(f"{name}: {value}" for name, value in verdict.figures)]
    return "\n".join(lines)
