"""Per-job worker overhead outside generation, over the devstack with the fake Gemini.

``uv run python -m bench.pipeline [jobs]`` starts the devstack on a scratch database (on the
server in ``DATABASE_URL``, else an embedded Postgres from ``pgserver``), queues text jobs and
drains them one at a time through the real dispatcher, ``SupabaseQueue`` and the pipeline
(fake Gemini at zero latency, real Storage over loopback). It prints p50/p95 of the claim, the
three concurrent uploads, the completion and their sum (the overhead outside generation), the
whole job for context, and clean + thumbnail + PDF of a 1024x1024 page. Asserts nothing.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import anyio
import asyncpg

from bench import harness
from realtime_worker import config
from realtime_worker.assets import SupabaseAssets
from realtime_worker.config import WorkerSettings
from realtime_worker.dispatcher import Dispatcher, DispatcherSettings
from realtime_worker.generator import GeneratedImage, GenerationRequest, Generator
from realtime_worker.jobs import Job, JobResult, PaperSize
from realtime_worker.metrics import Metrics
from realtime_worker.paths import ObjectPath
from realtime_worker.pipeline import Pipeline, gemini_generator, render_outputs
from realtime_worker.queue import JobQueue, SupabaseQueue
from realtime_worker.storage import Storage, SupabaseStorage
from realtime_worker.worker import queue_rpc, supabase_client
from realtime_worker_devstack import users
from realtime_worker_devstack.server import Devstack, running

WARM_UP = 5
PAGE = Path(__file__).resolve().parents[1] / "fixtures" / "pages" / "clean.png"
Samples = dict[str, dict[uuid.UUID, float]]


class TimedQueue:
    """The queue port, timing the claim that returned each job and each completion (ms)."""

    def __init__(self, inner: JobQueue, samples: Samples) -> None:
        self._inner, self._samples = inner, samples

    async def claim_jobs(self, worker: str, limit: int, lease_seconds: int) -> list[Job]:
        started = time.perf_counter()
        jobs = await self._inner.claim_jobs(worker, limit, lease_seconds)
        for job in jobs:
            self._samples["claim"][job.id] = (time.perf_counter() - started) * 1000
            self._samples["started"][job.id] = started
        return jobs

    async def complete(self, job_id: uuid.UUID, worker: str, result: JobResult) -> bool:
        started = time.perf_counter()
        done = await self._inner.complete(job_id, worker, result)
        self._samples["complete"][job_id] = (time.perf_counter() - started) * 1000
        self._samples["job"][job_id] = (time.perf_counter() - self._samples["started"][job_id]) * 1000
        return done

    async def claim_job(self, job_id: uuid.UUID, worker: str, lease_seconds: int) -> Job | None:
        return await self._inner.claim_job(job_id, worker, lease_seconds)

    async def heartbeat(self, job_id: uuid.UUID, worker: str, lease_seconds: int) -> bool:
        return await self._inner.heartbeat(job_id, worker, lease_seconds)

    async def fail(self, job_id: uuid.UUID, worker: str, error: str, code: str,
                   retry_in_seconds: int | None) -> str | None:
        return await self._inner.fail(job_id, worker, error, code, retry_in_seconds)

    async def defer(self, job_id: uuid.UUID, worker: str, error: str, code: str,
                    retry_in_seconds: int) -> str | None:
        return await self._inner.defer(job_id, worker, error, code, retry_in_seconds)

    async def release(self, job_id: uuid.UUID, worker: str) -> bool:
        return await self._inner.release(job_id, worker)

    async def reap_expired(self, limit: int) -> int:
        return await self._inner.reap_expired(limit)


class TimedStorage:
    """The Storage port, recording the wall time from a job's first upload start to its last end."""

    def __init__(self, inner: Storage, samples: Samples) -> None:
        self._inner, self._samples = inner, samples
        self._first: dict[uuid.UUID, float] = {}

    async def download(self, path: ObjectPath) -> bytes:
        return await self._inner.download(path)

    async def upload(self, path: ObjectPath, data: bytes, content_type: str) -> None:
        job_id = uuid.UUID(path.name.split("/")[1])
        first = self._first.setdefault(job_id, time.perf_counter())
        await self._inner.upload(path, data, content_type)
        self._samples["uploads"][job_id] = (time.perf_counter() - first) * 1000

    async def remove(self, path: ObjectPath) -> None:
        await self._inner.remove(path)


class TimedGenerator:
    """The Generator port, timing each generation (the fake Gemini draws its page here)."""

    def __init__(self, inner: Generator, samples: Samples) -> None:
        self._inner, self._samples = inner, samples
        self.durations: list[float] = []

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        started = time.perf_counter()
        image = await self._inner.generate(request)
        self.durations.append((time.perf_counter() - started) * 1000)
        return image

    async def aclose(self) -> None:
        await self._inner.aclose()


async def queue_jobs(dsn: str, count: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        user = await users.create(conn, count)
        await conn.executemany("insert into public.jobs (user_id, params_json) values ($1, $2)",
                               [(user, '{"text_prompt": "a lighthouse"}')] * count)
    finally:
        await conn.close()


def settings_for(stack: Devstack) -> WorkerSettings:
    return config.load(WorkerSettings, **stack.env(), PORT=0, WORKER_ID="bench",
                       MAX_CONCURRENT_JOBS=1, IMAGE_THREADS=1, LOG_LEVEL="WARNING")


async def drain(stack: Devstack, samples: Samples) -> list[float]:
    settings, metrics = settings_for(stack), Metrics()
    async with supabase_client(settings) as client, queue_rpc(settings) as rpc:
        generator = TimedGenerator(gemini_generator(settings), samples)
        pipeline = Pipeline(generator=generator, storage=TimedStorage(SupabaseStorage(client), samples),
                            assets=SupabaseAssets(client), settings=settings, metrics=metrics,
                            limiter=anyio.CapacityLimiter(1))
        queue = TimedQueue(SupabaseQueue(rpc, metrics), samples)
        dispatcher = Dispatcher(queue, pipeline, DispatcherSettings(
            worker_id="bench", max_concurrent_jobs=1, lease_seconds=60), metrics)
        try:
            await dispatcher.drain()
        finally:
            await generator.aclose()
    return generator.durations


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def row(name: str, values: list[float]) -> str:
    return (f"{name:<28} {percentile(values, 0.5):>8.1f} {percentile(values, 0.95):>8.1f} "
            f"{statistics.fmean(values):>8.1f}")


def report(samples: Samples, generation: list[float]) -> None:
    order = sorted(samples["started"], key=samples["started"].__getitem__)[WARM_UP:]
    steps = {step: [samples[step][j] for j in order] for step in ("claim", "uploads", "complete", "job")}
    overhead = [sum(samples[s][j] for s in ("claim", "uploads", "complete")) for j in order]
    print(f"{len(order)} jobs after {WARM_UP} warm-up, one at a time, devstack on loopback")
    print(f"{'step':<28} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8}")
    print(row("claim (worker_claim_jobs)", steps["claim"]))
    print(row("three uploads (concurrent)", steps["uploads"]))
    print(row("complete (worker_complete)", steps["complete"]))
    print(row("overhead outside generation", overhead))
    print(row("generation (fake Gemini)", generation[WARM_UP:]))
    print(row("whole job, claim..complete", steps["job"]))


def render_timings(iterations: int = 30) -> list[float]:
    data, timings = PAGE.read_bytes(), []
    render_outputs(data, PaperSize.A4, "Bench", True)  # warm-up
    for _ in range(iterations):
        started = time.perf_counter()
        render_outputs(data, PaperSize.A4, "Bench", True)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


async def main(jobs: int) -> None:
    samples: Samples = defaultdict(dict)
    with tempfile.TemporaryDirectory(prefix="rw-bench-pipeline-") as folder:
        async with harness.postgres_server(Path(folder)) as admin, \
                harness.scratch_database(admin, "rw_bench_pipeline") as dsn, \
                running(database_dsn=dsn, data_dir=Path(folder) / "devstack") as stack:
            await queue_jobs(dsn, jobs + WARM_UP)
            generation = await drain(stack, samples)
    report(samples, generation)
    print(row("clean+thumbnail+PDF 1024px", render_timings()))


if __name__ == "__main__":
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 50)
