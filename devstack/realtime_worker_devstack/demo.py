"""``realtime-worker demo``: a newcomer's first command, with nothing configured.

Starts the devstack over an embedded Postgres (under ``--data-dir``), a worker in realtime
mode beside it, and submits sample jobs of every kind the way the app does: text prompts with
different complexity, line thickness and paper size, a photo uploaded to ``originals/<user>/``
through the official client with its ``assets`` row, and an edit of the first page once it is
done. One line per state change while they run; then the outputs are downloaded through
Storage into ``--output`` (``<n>-<slug>/edge.png``, ``thumbnail.png``, ``coloring_page.pdf``),
a summary is printed and everything stops. Exit code 0 only when every job succeeded.

The fake Gemini draws the pages unless ``GEMINI_API_KEY`` is set in the environment. ``.env``
is not read: the demo must behave the same on every machine. Keys are never printed.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import re
import signal
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import asyncpg
from loguru import logger
from PIL import Image

from realtime_worker import config, logs, paths, submit
from realtime_worker.config import WorkerSettings
from realtime_worker.console import say
from realtime_worker.jobs import AssetKind, JobStatus
from realtime_worker.storage import SupabaseStorage
from realtime_worker.worker import Worker, supabase_client
from realtime_worker_devstack import postgres, users
from realtime_worker_devstack import stack as devstack
from realtime_worker_devstack.dev import (
    HOST,
    default_processor,
    gemini_description,
    stack_secrets,
    stack_worker_settings,
    wait_subscribed,
)
from realtime_worker_devstack.server import Devstack

DEMO_USER_ID = UUID("00000000-0000-4000-8000-0000000de770")
DEMO_EMAIL = "demo@example.test"
DEMO_CREDITS = 100
DEFAULT_OUTPUT = Path("demo-output")
DEFAULT_TIMEOUT_SECONDS = 180.0
POLL_SECONDS = 0.05
PHOTO = "sample_photo.jpg"
PDF_FILE = paths.OUTPUT_FILES[AssetKind.PDF]
TERMINAL = frozenset({JobStatus.SUCCEEDED.value, JobStatus.FAILED.value})

TEXT_SAMPLES: tuple[dict[str, Any], ...] = (
    {"text_prompt": "a tiger eating a burger", "complexity": "standard", "line_thickness": "medium",
     "paper_size": "A4", "title": "Tiger Lunch"},
    {"text_prompt": "a castle on a hill with a friendly dragon", "complexity": "detailed",
     "line_thickness": "thin", "paper_size": "Letter", "title": "The Castle"},
    {"text_prompt": "a smiling sun over the sea", "complexity": "simple", "line_thickness": "thick",
     "paper_size": "A4"},
)
PHOTO_PARAMS: dict[str, Any] = {"complexity": "standard", "line_thickness": "medium",
                                "paper_size": "A4", "title": "From a photo"}
EDIT_PROMPT = "give the tiger a party hat"


@dataclass(frozen=True)
class DemoOptions:
    data_dir: Path
    output: Path = DEFAULT_OUTPUT
    port: int = 0
    timeout: float = DEFAULT_TIMEOUT_SECONDS


# --- tracking jobs ---------------------------------------------------------------------------


def slugify(text: str, limit: int = 40) -> str:
    """``a-tiger-eating-a-burger``: lower-case words joined by dashes, cut at a word boundary."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(slug) > limit:
        slug = slug[:limit + 1].rsplit("-", 1)[0]
    return slug or "job"


def millis(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


@dataclass
class Tracked:
    """One submitted job and what the demo has seen of it."""

    number: int
    kind: str
    label: str
    name: str
    job_id: UUID
    status: str = JobStatus.QUEUED.value
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: str | None = None

    @property
    def folder(self) -> str:
        return f"{self.number}-{slugify(self.name)}"

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def pickup_seconds(self) -> float | None:
        if self.created_at is None or self.started_at is None:
            return None
        return (self.started_at - self.created_at).total_seconds()

    def run_seconds(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()

    def describe(self, status: str) -> str:
        """The text after the status in a progress line (``queued`` again means a retry)."""
        if status == JobStatus.RUNNING.value:
            pickup = self.pickup_seconds()
            return f"picked up {millis(pickup)} after it was queued" if pickup is not None else ""
        if status == JobStatus.SUCCEEDED.value:
            ran = self.run_seconds()
            return f"in {ran:.2f} s" if ran is not None else ""
        if status == JobStatus.FAILED.value:
            return self.error or ""
        return f"again, to be retried: {self.error}" if self.error else "again"


def passed_through(job: Tracked, status: str) -> list[str]:
    """``status``, after ``running`` when the job ran between two looks."""
    if status in TERMINAL and job.status != JobStatus.RUNNING.value and job.started_at is not None:
        return [JobStatus.RUNNING.value, status]
    return [status]


class Progress:
    """Prints one line per state a job enters, with the time since the first submission."""

    def __init__(self) -> None:
        self.jobs: list[Tracked] = []
        self._t0 = time.monotonic()

    def add(self, kind: str, label: str, name: str, job_id: UUID) -> Tracked:
        """A job just submitted (its ``queued`` line is printed now)."""
        job = Tracked(len(self.jobs) + 1, kind, label, name, job_id)
        self.jobs.append(job)
        self._line(job, JobStatus.QUEUED.value, "")
        return job

    def update(self, job: Tracked, row: asyncpg.Record) -> None:
        job.created_at, job.started_at = row["created_at"], row["started_at"]
        job.ended_at, job.error = row["ended_at"], row["error"]
        status = str(row["status"])
        if status == job.status:
            return
        for step in passed_through(job, status):
            self._line(job, step, job.describe(step))
        job.status = status

    def _line(self, job: Tracked, status: str, detail: str) -> None:
        label, elapsed = f'{job.kind:<5} "{job.label}"', time.monotonic() - self._t0
        say(f"  +{elapsed:5.2f}s  #{job.number} {label:<50} {status:<9} {detail}".rstrip())

    @property
    def pending(self) -> list[Tracked]:
        return [job for job in self.jobs if not job.done]


async def poll(conn: asyncpg.Connection, progress: Progress) -> None:
    rows = await conn.fetch(
        "select id, status::text as status, created_at, started_at, ended_at, error"
        " from public.jobs where id = any($1::uuid[])", [job.job_id for job in progress.jobs])
    by_id = {row["id"]: row for row in rows}
    for job in progress.jobs:
        if job.job_id in by_id:
            progress.update(job, by_id[job.job_id])


# --- the app's side: user, upload, jobs ------------------------------------------------------


async def seed_demo_user(conn: asyncpg.Connection) -> UUID:
    """The demo's user (fixed id), signed up on the first run and topped up on every run."""
    async with conn.transaction():
        await users.sign_up(conn, DEMO_USER_ID, DEMO_EMAIL)
        await users.top_up(conn, DEMO_USER_ID, DEMO_CREDITS)
    return DEMO_USER_ID


async def upload_photo(client: Any, user: UUID) -> UUID:
    """What the app does with a user's photo: the object in ``originals/<user>/``, then its asset row."""
    data = await anyio.Path(postgres.fixtures_dir() / "photos" / PHOTO).read_bytes()
    name = f"{user}/demo/{PHOTO}"
    await client.storage.from_(paths.ORIGINALS).upload(
        name, data, {"content-type": "image/jpeg", "upsert": "true"})
    width, height = Image.open(io.BytesIO(data)).size
    response = await client.table("assets").insert({
        "user_id": str(user), "kind": "original", "storage_path": name,
        "bytes": len(data), "width": width, "height": height}).execute()
    return UUID(str(response.data[0]["id"]))


async def page_asset(client: Any, user: UUID, job_id: UUID) -> UUID:
    """The ``edge_map`` asset a finished job wrote (what the app offers to edit)."""
    page = paths.output_path(AssetKind.EDGE_MAP, user, job_id)
    response = await client.table("assets").select("id").eq("storage_path", page.name).execute()
    return UUID(str(response.data[0]["id"]))


class Demo:
    """Submits the samples, follows them to the end, downloads what they made."""

    def __init__(self, conn: asyncpg.Connection, client: Any, user: UUID) -> None:
        self._conn, self._client, self._user = conn, client, user
        self.progress = Progress()
        self._edit_pending = True

    async def submit(self, kind: str, label: str, name: str, params: dict[str, Any]) -> None:
        job_id = await submit.submit(self._conn, params, user_id=self._user)
        self.progress.add(kind, label, name, job_id)

    async def submit_samples(self) -> None:
        for params in TEXT_SAMPLES:
            await self.submit("text", params["text_prompt"], params["text_prompt"], params)
        asset = await upload_photo(self._client, self._user)
        await self.submit("photo", PHOTO, "photo", {**PHOTO_PARAMS, "asset_id": str(asset)})

    async def _maybe_edit(self) -> None:
        """Once the first page is done, ask for an edit of it (skipped when it failed)."""
        first = self.progress.jobs[0]
        if not self._edit_pending or not first.done:
            return
        self._edit_pending = False
        if first.status != JobStatus.SUCCEEDED.value:
            say(f"  (edit of #{first.number} skipped: that page failed)")
            return
        source = await page_asset(self._client, self._user, first.job_id)
        await self.submit("edit", f"#{first.number}: {EDIT_PROMPT}", f"edit of {first.number}", {
            "edit_parent_id": str(first.job_id), "edit_prompt": EDIT_PROMPT,
            "edit_source_asset_id": str(source)})

    async def follow(self, within: float) -> bool:
        """Print progress until every job is done; False when ``within`` seconds ran out."""
        with anyio.move_on_after(within):
            while True:
                await poll(self._conn, self.progress)
                await self._maybe_edit()
                if not self._edit_pending and not self.progress.pending:
                    return True
                await anyio.sleep(POLL_SECONDS)
        say(f"  timed out after {within:.0f} s: {len(self.progress.pending)} job(s) unfinished")
        return False

    async def download(self, output: Path) -> list[Path]:
        """Each succeeded job's three files, through Storage, into ``output/<n>-<slug>/``."""
        storage, folders = SupabaseStorage(self._client), []
        for job in self.progress.jobs:
            if job.status != JobStatus.SUCCEEDED.value:
                continue
            folder = anyio.Path(output / job.folder)
            await folder.mkdir(parents=True, exist_ok=True)
            for kind, file in paths.OUTPUT_FILES.items():
                data = await storage.download(paths.output_path(kind, self._user, job.job_id))
                await (folder / file).write_bytes(data)
            folders.append(Path(folder))
        return folders


# --- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    jobs: Sequence[Tracked]
    folders: Sequence[Path]
    seconds: float

    @property
    def failed(self) -> int:
        return sum(job.status != JobStatus.SUCCEEDED.value for job in self.jobs)

    def lines(self, output: Path) -> list[str]:
        pickups = [p for p in (job.pickup_seconds() for job in self.jobs) if p is not None]
        lines = [f"jobs: {len(self.jobs)}, succeeded: {len(self.jobs) - self.failed},"
                 f" failed: {self.failed}, total time {self.seconds:.1f} s"]
        if pickups:
            lines.append(f"pickup latency (queued → running): p50 {millis(statistics.median(pickups))},"
                         f" max {millis(max(pickups))}")
        if self.folders:
            lines.append(f"pages in {output}/ (open {self.folders[0] / PDF_FILE}):")
            files = "  ".join(paths.OUTPUT_FILES.values())
            lines += [f"  {folder.name}/  {files}" for folder in self.folders]
        return lines


# --- running it ------------------------------------------------------------------------------


def demo_worker_settings(stack: Devstack, environ: Mapping[str, str]) -> WorkerSettings:
    """A realtime worker on a free health port; ``.env`` is not read, LOG_LEVEL defaults to WARNING."""
    return stack_worker_settings(
        stack, environ, PORT=0, WORKER_ID=f"demo-{os.getpid()}", WORKER_MODE="realtime",
        PAUSE_WORKER=False, LOG_LEVEL=environ.get("LOG_LEVEL", "WARNING"), _env_file=None)


async def drive(stack: Devstack, settings: WorkerSettings, options: DemoOptions) -> Report:
    """The app's side of the demo, against the running stack and worker."""
    begun = time.monotonic()
    async with supabase_client(settings) as client:
        conn = await asyncpg.connect(stack.database_dsn)
        try:
            demo = Demo(conn, client, await seed_demo_user(conn))
            await demo.submit_samples()
            await demo.follow(options.timeout)
            folders = await demo.download(options.output)
        finally:
            await conn.close()
    return Report(demo.progress.jobs, folders, time.monotonic() - begun)


async def with_worker(stack: Devstack, options: DemoOptions) -> Report:
    settings = demo_worker_settings(stack, os.environ)
    logs.configure(settings.log_format, settings.log_level, stack_secrets(stack, settings))
    worker = Worker(settings, default_processor())
    async with anyio.create_task_group() as tg:
        await tg.start(functools.partial(worker.run, host=HOST, install_signals=False))
        await wait_subscribed(worker)
        say(f"worker running (realtime mode); pages are drawn by {gemini_description(settings)}")
        say("jobs:")
        try:
            report = await drive(stack, settings, options)
        finally:
            worker.request_stop()
    return report


async def run_demo(options: DemoOptions) -> Report:
    """Stack, worker, samples, outputs, summary; everything is stopped on the way out."""
    begun = time.monotonic()
    say(f"starting the local stack (embedded Postgres, data in {options.data_dir}) ...")
    stack_options = devstack.Options(data_dir=options.data_dir, port=options.port)
    async with devstack.started(stack_options) as (stack, _dev_user):
        say(f"stack ready on {stack.url} in {time.monotonic() - begun:.1f} s")
        report = await with_worker(stack, options)
    return Report(report.jobs, report.folders, time.monotonic() - begun)


async def interruptible(options: DemoOptions) -> Report | None:
    """``run_demo``, cancelled cleanly (stack and Postgres stopped) by SIGINT or SIGTERM."""
    result: list[Report] = []

    async def demo(scope: anyio.CancelScope) -> None:
        result.append(await run_demo(options))
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(demo, tg.cancel_scope)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                logger.bind(event="demo.interrupted", signal=signal.Signals(signum).name).warning(
                    "interrupted: stopping the worker and the stack")
                tg.cancel_scope.cancel()
    return result[0] if result else None


def cmd_demo(args: argparse.Namespace) -> int:
    """Start everything locally, run sample jobs of every kind, save the pages, stop (no setup needed)."""
    tools = config.load(config.ToolSettings, _env_file=None, LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"))
    logs.configure(tools.log_format, tools.log_level)
    options = DemoOptions(data_dir=args.data_dir.resolve(), output=args.output, port=args.port,
                          timeout=args.timeout)
    report = anyio.run(interruptible, options)
    if report is None:
        say("demo interrupted")
        return 130
    say("\n".join(["", "summary:", *report.lines(options.output)]))
    say("everything is stopped. Next: `uv run pytest`, or `realtime-worker dev` to keep it running.")
    return 0 if report.failed == 0 else 1


def register(subs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subs.add_parser("demo", help=cmd_demo.__doc__)
    p.add_argument("--data-dir", type=Path, default=Path(".devstack"),
                   help="keys, stored objects and the embedded Postgres (default .devstack; reused)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                   help=f"where the pages are saved (default {DEFAULT_OUTPUT})")
    p.add_argument("--port", type=int, default=0, help="devstack port on 127.0.0.1 (default: a free one)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS,
                   help=f"seconds the jobs may take in all (default {DEFAULT_TIMEOUT_SECONDS:.0f})")
    p.set_defaults(func=cmd_demo)
