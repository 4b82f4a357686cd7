"""Memory of a burst of photos: four 24-megapixel photos at once under the Cloud Run settings.

A worker process with ``MAX_CONCURRENT_JOBS`` and ``IMAGE_THREADS`` as
``deploy/cloudrun/service.yaml`` ships them gets four photo jobs in one commit, each a
6000x4000 RGBA PNG (the worst case of ``bench.photo_decode``: no reduce-on-load) in
``originals``; the fake Gemini answers at once. RSS (``VmRSS``) is sampled every 0.2 s from
idle until the jobs ended, then for ``SETTLE`` seconds more. Variants: the worker as shipped
(``malloc_trim`` after image work), the same with ``MALLOC_ARENA_MAX=2``, and with neither
(``bench.experiments no-trim``).

``uv run --group bench python -m bench photo_burst`` (about 4 minutes).
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import yaml
from PIL import Image

from bench import harness
from bench.context import Context
from bench.harness import Stack, Worker
from bench.memory import finished
from bench.report import Section
from realtime_worker_devstack import photos
from realtime_worker_devstack.stack import DEV_USER_ID

NAME = "photo_burst"
PHOTOS = 4
SETTLE = 60.0
SERVICE = Path(__file__).resolve().parents[1] / "deploy" / "cloudrun" / "service.yaml"


@dataclass(frozen=True)
class Variant:
    label: str
    experiment: str | None
    env: dict[str, str]


VARIANTS = (
    Variant("as shipped: malloc_trim after image work", None, {}),
    Variant("malloc_trim and MALLOC_ARENA_MAX=2", None, {"MALLOC_ARENA_MAX": "2"}),
    Variant("neither (glibc defaults)", "no-trim", {}),
)


@dataclass(frozen=True)
class Burst:
    label: str
    idle_mib: float
    peak_mib: float
    after_mib: float  # RSS SETTLE seconds after the last job ended
    seconds: float


def shipped_settings() -> dict[str, str]:
    """MAX_CONCURRENT_JOBS and IMAGE_THREADS as the Cloud Run service sets them."""
    service = yaml.safe_load(SERVICE.read_text())
    env = service["spec"]["template"]["spec"]["containers"][0]["env"]
    wanted = ("MAX_CONCURRENT_JOBS", "IMAGE_THREADS")
    return {e["name"]: str(e["value"]) for e in env if e["name"] in wanted}


def big_png() -> bytes:
    image = photos.scene(photos.PHONE_24MP).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def upload(stack: Stack, name: str, data: bytes) -> None:
    key = stack.env["SUPABASE_SERVICE_ROLE_KEY"]
    request = urllib.request.Request(
        f"{stack.url}/storage/v1/object/originals/{name}", data=data, method="POST",
        headers={"apikey": key, "Authorization": f"Bearer {key}", "Content-Type": "image/png",
                 "x-upsert": "true"})
    with urllib.request.urlopen(request, timeout=30) as response:  # loopback only
        response.read()


async def photo_params(stack: Stack, conn: asyncpg.Connection, data: bytes) -> list[str]:
    """Four uploaded photos with their asset rows, as the app makes them; job params."""
    params = []
    for index in range(PHOTOS):
        name = f"{DEV_USER_ID}/burst-{index}.png"
        await asyncio.to_thread(upload, stack, name, data)
        asset = await conn.fetchval(
            "insert into public.assets (user_id, kind, storage_path, bytes, width, height)"
            " values ($1, 'original', $2, $3, 6000, 4000) returning id",
            DEV_USER_ID, name, len(data))
        params.append(json.dumps({"asset_id": str(asset)}))
    return params


async def insert_all(conn: asyncpg.Connection, params: list[str]) -> list[uuid.UUID]:
    async with conn.transaction():
        return [await conn.fetchval("insert into public.jobs (user_id, params_json)"
                                    " values ($1, $2::jsonb) returning id", DEV_USER_ID, p)
                for p in params]


async def peak_until_done(worker: Worker, conn: asyncpg.Connection, ids: list[uuid.UUID]) -> float:
    peak, deadline = 0.0, time.monotonic() + 300
    while not await finished(conn, ids):
        if time.monotonic() > deadline:
            raise TimeoutError("photo burst not finished after 300 s")
        peak = max(peak, worker.rss_mib())
        await asyncio.sleep(0.2)
    return peak


async def settle(worker: Worker, seconds: float) -> tuple[float, float]:
    """(highest RSS, RSS at the end) over ``seconds``."""
    peak, end = 0.0, time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, worker.rss_mib())
        await asyncio.sleep(0.2)
    return peak, worker.rss_mib()


async def burst(ctx: Context, conn: asyncpg.Connection, variant: Variant, data: bytes) -> Burst:
    params = await photo_params(ctx.stack, conn, data)
    env: dict[str, Any] = {**shipped_settings(), **variant.env}  # only str values
    async with harness.worker(ctx.stack, ctx.folder, f"burst-{len(variant.env)}-{variant.experiment}",
                              processor=harness.PIPELINE, experiment=variant.experiment,
                              **env) as worker:
        await asyncio.sleep(2.0)
        idle, started = worker.rss_mib(), time.monotonic()
        ids = await insert_all(conn, params)
        peak = await peak_until_done(worker, conn, ids)
        seconds = time.monotonic() - started
        later_peak, after = await settle(worker, SETTLE)
        failed = await conn.fetchval("select count(*) from public.jobs where id = any($1::uuid[])"
                                     " and status <> 'succeeded'", ids)
    await harness.clear_jobs(conn)
    if failed:
        raise RuntimeError(f"{failed} of {PHOTOS} photo jobs did not succeed ({variant.label})")
    return Burst(variant.label, idle, max(peak, later_peak), after, seconds)


async def measure(ctx: Context) -> list[Burst]:
    data = await asyncio.to_thread(big_png)
    conn = await asyncpg.connect(ctx.stack.dsn)
    try:
        await harness.clear_jobs(conn)
        return [await burst(ctx, conn, variant, data) for variant in VARIANTS]
    finally:
        await conn.close()


def describe(ctx: Context, bursts: list[Burst]) -> Section:
    settings = shipped_settings()
    section = ctx.results.section("Memory: four 24 MP photos at once (Cloud Run settings)")
    section.table(("worker", "RSS idle", "RSS peak", f"RSS {SETTLE:.0f} s after", "after − idle",
                   "4 jobs took"),
                  [(b.label, f"{b.idle_mib:.0f} MiB", f"{b.peak_mib:.0f} MiB",
                    f"{b.after_mib:.0f} MiB", f"{b.after_mib - b.idle_mib:.0f} MiB",
                    f"{b.seconds:.1f} s") for b in bursts])
    section.text(f"`MAX_CONCURRENT_JOBS={settings['MAX_CONCURRENT_JOBS']}`, "
                 f"`IMAGE_THREADS={settings['IMAGE_THREADS']}` (as deploy/cloudrun/service.yaml); "
                 "four 6000x4000 RGBA PNG photo jobs in one commit, fake Gemini answering at once. "
                 "RSS is the worker's `VmRSS`, sampled every 0.2 s.")
    return section


async def run(ctx: Context) -> None:
    bursts = await measure(ctx)
    for b in bursts:
        print(f"{b.label:<48} idle {b.idle_mib:4.0f}  peak {b.peak_mib:4.0f}  "
              f"{SETTLE:.0f} s after {b.after_mib:4.0f} MiB", flush=True)
    describe(ctx, bursts)
    shipped = bursts[0]
    back = shipped.after_mib - shipped.idle_mib
    ctx.results.target(16, f"RSS {SETTLE:.0f} s after four 24 MP photos, above idle", "≤ 50 MB",
                       f"{back * 2**20 / 1e6:.0f} MB (peak {shipped.peak_mib:.0f} MiB)",
                       back * 2**20 <= 50e6)
