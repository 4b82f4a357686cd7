"""The pipeline end to end over the devstack: fake Gemini, real Storage, PostgREST and Postgres.

Users and jobs are made the way the app makes them (``tests.helpers``); the worker runs as
``realtime-worker run --once`` drains (production Supabase client, ``SupabaseQueue``, the
dispatcher) with the default processor, ``open_pipeline``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import uuid
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from PIL import Image
from pypdf import PdfReader
from supabase import AsyncClient

from realtime_worker import config, imaging
from realtime_worker.config import WorkerSettings
from realtime_worker.dispatcher import Dispatcher, DispatcherSettings
from realtime_worker.metrics import Metrics
from realtime_worker.pipeline import open_pipeline
from realtime_worker.queue import SupabaseQueue
from realtime_worker.retry import MAX_RETRY_DELAY_SECONDS
from realtime_worker.worker import Worker, WorkerContext, queue_rpc, supabase_client
from realtime_worker_devstack import photos
from realtime_worker_devstack.server import Devstack
from tests.edges import share_on_edges
from tests.helpers import balance, insert_job, job, make_user, refunds, sample
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.integration,
    # google-genai subclasses aiohttp.ClientSession for every session it opens.
    pytest.mark.filterwarnings("ignore:Inheritance class Aiohttp:DeprecationWarning"),
]

PHOTO = (Path(__file__).resolve().parents[2] / "fixtures" / "photos" / "sample_photo.jpg").read_bytes()
MODEL = "gemini-3.1-flash-lite-image"
OUTPUTS = {"edge_map": ("intermediates", "edge.png", "image/png", b"\x89PNG\r\n\x1a\n"),
           "thumbnail": ("intermediates", "thumbnail.png", "image/png", b"\x89PNG\r\n\x1a\n"),
           "pdf": ("artifacts", "coloring_page.pdf", "application/pdf", b"%PDF-")}
START_BALANCE = 10


def worker_settings(devstack: Devstack, **overrides: str) -> WorkerSettings:
    env = {**devstack.env(), "PORT": "0", "WORKER_ID": "pipeline-test", "GEMINI_MODEL": MODEL,
           "GEMINI_TIMEOUT_SECONDS": "10", "LOG_LEVEL": "WARNING", "CLEAN_LINE_ART": "true",
           "MAX_CONCURRENT_JOBS": "4", "IMAGE_THREADS": "2", **overrides}
    return config.load(WorkerSettings, **env)


async def run_worker_once(devstack: Devstack) -> Metrics:
    """What ``realtime-worker run --once`` does after its health server is up: drain due jobs."""
    settings, metrics = worker_settings(devstack), Metrics()
    with anyio.fail_after(60):
        async with supabase_client(settings) as client, queue_rpc(settings) as rpc, open_pipeline(
                WorkerContext(settings, client, metrics)) as processor:
            queue = SupabaseQueue(rpc, metrics)
            dispatcher = Dispatcher(queue, processor, DispatcherSettings(
                worker_id=settings.worker_id, max_concurrent_jobs=settings.max_concurrent_jobs,
                lease_seconds=settings.lease_seconds), metrics)
            await dispatcher.drain()
    return metrics


async def upload_photo(client: AsyncClient, conn: asyncpg.Connection, user: uuid.UUID,
                       data: bytes = PHOTO, file: str = "photo.jpg",
                       mime: str = "image/jpeg") -> uuid.UUID:
    """The app's upload: the object in ``originals/<user>/``, then an ``original`` asset row."""
    name = f"{user}/{file}"
    await client.storage.from_("originals").upload(name, data, {"content-type": mime})
    asset_id: uuid.UUID = await conn.fetchval(
        "insert into public.assets (user_id, kind, storage_path, bytes, width, height)"
        " values ($1, 'original', $2, $3, 800, 600) returning id", user, name, len(data))
    return asset_id


async def output_rows(conn: asyncpg.Connection, user: uuid.UUID, job_id: uuid.UUID) -> dict[str, Any]:
    # The app's own filter (apps/web/app/api/jobs/[id]/download/route.ts and pdf/export).
    rows = await conn.fetch("select * from public.assets where user_id = $1 and storage_path like $2",
                            user, f"{user}/{job_id}/%")
    return {str(row["kind"]): row for row in rows}


async def check_outputs(client: AsyncClient, conn: asyncpg.Connection, user: uuid.UUID,
                        job_id: uuid.UUID) -> dict[str, bytes]:
    """Three objects with the right type and signature, three matching asset rows."""
    rows, found = await output_rows(conn, user, job_id), {}
    assert sorted(rows) == sorted(OUTPUTS)
    for kind, (bucket, file, mime, signature) in OUTPUTS.items():
        name = f"{user}/{job_id}/{file}"
        data = await client.storage.from_(bucket).download(name)
        row = rows[kind]
        assert row["storage_path"] == name  # bucket-relative, as the app signs it
        assert data.startswith(signature) and row["bytes"] == len(data)
        assert row["hash"] == hashlib.sha256(data).hexdigest()
        stored_mime = await conn.fetchval("select metadata->>'mimetype' from storage.objects"
                                          " where bucket_id = $1 and name = $2", bucket, name)
        assert stored_mime == mime
        found[kind] = data
    return found


async def check_succeeded(conn: asyncpg.Connection, user: uuid.UUID, job_id: uuid.UUID) -> None:
    row = await job(conn, job_id)
    assert (row["status"], row["model"], row["cost_cents"]) == ("succeeded", MODEL, 4)
    assert row["ended_at"] is not None and row["error"] is None
    assert await refunds(conn, job_id) == 0


# -- each kind --------------------------------------------------------------------------------


async def test_text_job_end_to_end(devstack: Devstack, conn: asyncpg.Connection,
                                   supabase_service: AsyncClient) -> None:
    user = await make_user(conn, START_BALANCE)
    job_id = await insert_job(conn, user, {"text_prompt": "a tiger eating a burger",
                                           "paper_size": "Letter", "title": "Tiger"})
    await run_worker_once(devstack)
    await check_succeeded(conn, user, job_id)
    outputs = await check_outputs(supabase_service, conn, user, job_id)
    page = PdfReader(io.BytesIO(outputs["pdf"])).pages[0]
    assert (round(float(page.mediabox.width)), round(float(page.mediabox.height))) == (612, 792)
    rows = await output_rows(conn, user, job_id)
    assert (rows["pdf"]["width"], rows["pdf"]["height"]) == (612, 792)
    request = devstack.gemini.requests[-1]
    assert request.image_count == 0 and request.model == MODEL and request.aspect_ratio == "3:4"
    assert "a tiger eating a burger" in request.prompt
    assert await balance(conn, user) == START_BALANCE - 1


async def test_image_job_sends_the_uploaded_photo(devstack: Devstack, conn: asyncpg.Connection,
                                                  supabase_service: AsyncClient) -> None:
    user = await make_user(conn, START_BALANCE)
    asset = await upload_photo(supabase_service, conn, user)
    job_id = await insert_job(conn, user, {"asset_id": str(asset), "complexity": "simple"})
    await run_worker_once(devstack)
    await check_succeeded(conn, user, job_id)
    await check_outputs(supabase_service, conn, user, job_id)
    sent = devstack.gemini.requests[-1].image_sha256
    assert sent == (hashlib.sha256(imaging.prepare_input_photo(PHOTO)).hexdigest(),)


async def test_photos_as_phones_send_them(devstack: Devstack, conn: asyncpg.Connection,
                                          supabase_service: AsyncClient) -> None:
    """A HEIC and a sideways JPEG with GPS succeed; Gemini gets each upright: the fake draws
    the outlines of what it was sent, and the stored page lies on the upright picture's."""
    user = await make_user(conn, START_BALANCE)
    upright = photos.scene((640, 480), 2)
    sent = {"heic": (photos.heic(upright), "photo.heic", "image/heic"),
            "sideways": (photos.sideways_with_metadata(upright), "sideways.jpg", "image/jpeg")}
    jobs = {}
    for label, (data, file, mime) in sent.items():
        asset = await upload_photo(supabase_service, conn, user, data, file, mime)
        jobs[label] = await insert_job(conn, user, {"asset_id": str(asset)})
    await run_worker_once(devstack)
    for label, job_id in jobs.items():
        await check_succeeded(conn, user, job_id)
        page = (await check_outputs(supabase_service, conn, user, job_id))["edge_map"]
        own, turned = (share_on_edges(page, image) for image in
                       (upright, upright.transpose(Image.Transpose.ROTATE_90)))
        assert own > 0.6 and own - turned > 0.25, (label, own, turned)
    assert [r.image_count for r in list(devstack.gemini.requests)[-2:]] == [1, 1]


async def test_too_large_photos_fail_readably_with_one_refund(
        devstack: Devstack, conn: asyncpg.Connection, supabase_service: AsyncClient) -> None:
    """Over the app's 10 MB, or more pixels than MAX_INPUT_PIXELS: failed before Gemini,
    a readable error, one refund; the worker goes on."""
    user = await make_user(conn, START_BALANCE)
    heavy = b"\xff\xd8\xff\xe0" + bytes(10 * 1024 * 1024)  # 10 MB + 4 bytes, never decoded
    wide = io.BytesIO()
    Image.new("1", (8000, 6300)).save(wide, format="PNG")  # 50.4 MP in a few kB
    uploads = [(heavy, "heavy.jpg", "image/jpeg"), (wide.getvalue(), "wide.png", "image/png")]
    bad = [await insert_job(conn, user, {"asset_id": str(
        await upload_photo(supabase_service, conn, user, *upload))}) for upload in uploads]
    valid = await insert_job(conn, user, {"asset_id": str(await upload_photo(supabase_service, conn, user))})
    calls = len(devstack.gemini.requests)
    await run_worker_once(devstack)
    rows = [await job(conn, j) for j in bad]
    assert [(r["status"], r["error_code"], r["error"]) for r in rows] == [
        ("failed", "input_too_large", "The uploaded photo is too large (at most 10 MB)"),
        ("failed", "input_too_large",
         "The uploaded photo has too many pixels (at most 50 megapixels)")]
    await check_succeeded(conn, user, valid)
    assert len(devstack.gemini.requests) == calls + 1  # only the valid job reached Gemini
    await run_worker_once(devstack)  # nothing left to do: no second refund
    assert [await refunds(conn, j) for j in (*bad, valid)] == [1, 1, 0]
    assert await balance(conn, user) == START_BALANCE - 1


async def test_edit_job_sends_the_source_page(devstack: Devstack, conn: asyncpg.Connection,
                                              supabase_service: AsyncClient) -> None:
    user = await make_user(conn, START_BALANCE)
    first = await insert_job(conn, user, {"text_prompt": "a castle"})
    await run_worker_once(devstack)
    source = (await output_rows(conn, user, first))["edge_map"]
    page = await supabase_service.storage.from_("intermediates").download(f"{user}/{first}/edge.png")
    edit = await insert_job(conn, user, {"edit_parent_id": str(first), "edit_prompt": "add a dragon",
                                         "edit_source_asset_id": str(source["id"])})
    await run_worker_once(devstack)
    await check_succeeded(conn, user, edit)
    await check_outputs(supabase_service, conn, user, edit)
    request = devstack.gemini.requests[-1]
    assert request.image_sha256 == (hashlib.sha256(imaging.prepare_input_photo(page)).hexdigest(),)
    assert "add a dragon" in request.prompt and "a castle" not in request.prompt


# -- error classes ----------------------------------------------------------------------------


async def seconds_until_retry(conn: asyncpg.Connection, job_id: uuid.UUID) -> float:
    value: float = await conn.fetchval(
        "select extract(epoch from run_after - now())::float8 from public.jobs where id = $1", job_id)
    return value


async def check_requeued(conn: asyncpg.Connection, user: uuid.UUID, job_id: uuid.UUID,
                         code: str, *, attempts: int = 1, deferrals: int = 0) -> None:
    row = await job(conn, job_id)
    assert (row["status"], row["attempts"], row["deferrals"], row["error_code"]) == (
        "queued", attempts, deferrals, code)
    assert await refunds(conn, job_id) == 0
    assert await balance(conn, user) == START_BALANCE - 1
    assert await output_rows(conn, user, job_id) == {}


async def check_failed_once(conn: asyncpg.Connection, user: uuid.UUID, job_id: uuid.UUID,
                            error: str) -> None:
    row = await job(conn, job_id)
    assert (row["status"], row["error"]) == ("failed", error)
    assert row["ended_at"] is not None
    assert await refunds(conn, job_id) == 1
    assert await balance(conn, user) == START_BALANCE
    assert await output_rows(conn, user, job_id) == {}


async def test_rate_limit_requeues_after_the_servers_delay(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    devstack.faults.update({"gemini_429_fraction": 1.0, "gemini_retry_delay_seconds": 45})
    user = await make_user(conn, START_BALANCE)
    job_id = await insert_job(conn, user)
    await run_worker_once(devstack)
    # Not the job's fault: deferred, the attempt not counted (issue 18).
    await check_requeued(conn, user, job_id, "rate_limited", attempts=0, deferrals=1)
    assert 40 < await seconds_until_retry(conn, job_id) <= 45


async def test_a_retry_delay_beyond_an_int_is_cut_to_a_day(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    """``retryDelay`` comes from outside; 3e9 s does not fit the contract's int seconds (a 429
    defers the job through ``worker_defer_job``: no attempt spent, one deferral)."""
    devstack.faults.update({"gemini_429_fraction": 1.0, "gemini_retry_delay_seconds": 3e9})
    user = await make_user(conn, START_BALANCE)
    job_id = await insert_job(conn, user)
    await run_worker_once(devstack)
    await check_requeued(conn, user, job_id, "rate_limited", attempts=0, deferrals=1)
    assert MAX_RETRY_DELAY_SECONDS - 60 < await seconds_until_retry(conn, job_id) <= MAX_RETRY_DELAY_SECONDS


async def test_a_trickling_download_ends_the_job_at_its_time_limit(
        devstack: Devstack, conn: asyncpg.Connection, supabase_service: AsyncClient) -> None:
    """Storage answers one byte every 5 s: each read is in time, heartbeats keep the lease, so
    only the job's own limit stops it. It is retried as job_timeout and its slot comes back."""
    user = await make_user(conn, START_BALANCE)
    asset = await upload_photo(supabase_service, conn, user)
    job_id = await insert_job(conn, user, {"asset_id": str(asset)})
    devstack.faults.update({"storage_drip_fraction": 1.0, "storage_drip_seconds": 5.0})
    settings = worker_settings(devstack, JOB_TIMEOUT_SECONDS="3", WORKER_MODE="poll",
                               POLL_INTERVAL_SECONDS="600", LEASE_SECONDS="6")
    worker = Worker(settings, open_pipeline)
    async with anyio.create_task_group() as tg:
        await tg.start(functools.partial(worker.run, host="127.0.0.1", install_signals=False))
        try:
            await wait_for(lambda: error_code_is(conn, job_id, "job_timeout"), within=30,
                           step=0.2, what="the job to time out")
            await wait_for(lambda: worker.dispatcher is not None and not worker.dispatcher.in_flight,
                           within=10, what="its slot to be freed")
        finally:
            worker.request_stop()
    await check_requeued(conn, user, job_id, "job_timeout")
    assert sample(worker.metrics, "worker_jobs_timed_out_total") == 1
    assert sample(worker.metrics, "worker_jobs_in_flight") == 0


async def error_code_is(conn: asyncpg.Connection, job_id: uuid.UUID, code: str) -> bool:
    return bool(await conn.fetchval("select error_code = $2 from public.jobs where id = $1",
                                    job_id, code))


async def test_unavailable_requeues_with_backoff(devstack: Devstack, conn: asyncpg.Connection) -> None:
    devstack.faults.update({"gemini_503_fraction": 1.0})
    user = await make_user(conn, START_BALANCE)
    job_id = await insert_job(conn, user)
    await run_worker_once(devstack)
    await check_requeued(conn, user, job_id, "gemini_unavailable")
    assert 1 < await seconds_until_retry(conn, job_id) <= 8  # first backoff: 5 s +- 50 %


# 544: storage-api's DatabaseTimeout; 423: an object locked by a concurrent upload; 522: Cloudflare
# could not reach Storage. Each is temporary: the job waits for a retry and keeps its credit.
@pytest.mark.parametrize("status", [503, 544, 423, 522])
async def test_storage_outage_requeues(devstack: Devstack, conn: asyncpg.Connection, status: int) -> None:
    devstack.faults.update({"storage_error_fraction": 1.0, "storage_error_status": status})
    user = await make_user(conn, START_BALANCE)
    job_id = await insert_job(conn, user)
    await run_worker_once(devstack)
    await check_requeued(conn, user, job_id, "storage_unavailable")


async def job_objects(devstack: Devstack, conn: asyncpg.Connection,
                      job_id: uuid.UUID) -> tuple[list[str], list[str]]:
    """The job's objects in Storage: its ``storage.objects`` rows and its files on disk."""
    rows = await conn.fetch("select bucket_id || '/' || name as path from storage.objects"
                            " where name like $1", f"%/{job_id}/%")
    root = devstack.storage.root
    files = [p.relative_to(root).as_posix() for p in root.rglob("*")
             if p.is_file() and str(job_id) in p.parts]
    return sorted(r["path"] for r in rows), sorted(files)


def refuse_uploads_of(file: str, status: int) -> dict[str, Any]:
    """A fault on every Storage request for one output file (its upload, in practice)."""
    return {"storage_error_fraction": 1.0, "storage_error_status": status,
            "storage_error_path_suffix": f"/{file}"}


# One of the three concurrent uploads fails; the job fails and is refunded, and none of its
# outputs may stay in Storage where the app would find them.
@pytest.mark.parametrize(("file", "status", "max_attempts", "error"), [
    ("coloring_page.pdf", 403, 3, "The page could not be stored"),  # RLS refusal
    ("edge.png", 413, 3, "The page could not be stored"),  # too large
    ("thumbnail.png", 503, 1, "File storage is unavailable"),  # last attempt
])
async def test_a_failed_upload_leaves_none_of_the_outputs(
        devstack: Devstack, conn: asyncpg.Connection, file: str, status: int, max_attempts: int,
        error: str) -> None:
    devstack.faults.update(refuse_uploads_of(file, status))
    user = await make_user(conn, START_BALANCE)
    job_id = await insert_job(conn, user, max_attempts=max_attempts)
    await run_worker_once(devstack)
    await check_failed_once(conn, user, job_id, error)
    assert await job_objects(devstack, conn, job_id) == ([], [])


async def test_a_temporary_upload_failure_cleans_up_and_the_retry_writes_all_three(
        devstack: Devstack, conn: asyncpg.Connection, supabase_service: AsyncClient) -> None:
    devstack.faults.update(refuse_uploads_of("coloring_page.pdf", 503))
    user = await make_user(conn, START_BALANCE)
    job_id = await insert_job(conn, user)
    await run_worker_once(devstack)
    await check_requeued(conn, user, job_id, "storage_unavailable")
    assert await job_objects(devstack, conn, job_id) == ([], [])
    devstack.faults.reset()
    await conn.execute("update public.jobs set run_after = now() where id = $1", job_id)
    await run_worker_once(devstack)
    await check_succeeded(conn, user, job_id)
    await check_outputs(supabase_service, conn, user, job_id)
    expected = sorted(f"{bucket}/{user}/{job_id}/{file}" for bucket, file, _, _ in OUTPUTS.values())
    assert await job_objects(devstack, conn, job_id) == (expected, expected)


async def test_safety_refusal_fails_with_one_refund(devstack: Devstack, conn: asyncpg.Connection) -> None:
    devstack.faults.update({"gemini_safety_fraction": 1.0})
    user = await make_user(conn, START_BALANCE)
    job_id = await insert_job(conn, user)
    await run_worker_once(devstack)
    await check_failed_once(conn, user, job_id, "This request can't be drawn")
    await run_worker_once(devstack)  # nothing left to do: no second refund
    await check_failed_once(conn, user, job_id, "This request can't be drawn")


async def test_no_image_is_retried_once_then_fails(devstack: Devstack, conn: asyncpg.Connection) -> None:
    devstack.faults.update({"gemini_no_image_fraction": 1.0})
    user = await make_user(conn, START_BALANCE)
    job_id = await insert_job(conn, user)
    await run_worker_once(devstack)
    await check_requeued(conn, user, job_id, "no_image")
    await conn.execute("update public.jobs set run_after = now() where id = $1", job_id)
    await run_worker_once(devstack)
    await check_failed_once(conn, user, job_id, "Gemini returned no image")
    assert (await job(conn, job_id))["attempts"] == 2


async def test_bad_key_leaves_the_job_queued_and_charged_once(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    """The worker's configuration is at fault, not the job: it waits for the fix (the worker
    pauses claiming; ``--once`` returns), with no attempt counted and no refund."""
    devstack.faults.update({"gemini_status": 401})
    user = await make_user(conn, START_BALANCE)
    job_id = await insert_job(conn, user)
    metrics = await run_worker_once(devstack)
    row = await job(conn, job_id)
    assert (row["status"], row["attempts"], row["error"], row["ended_at"]) == ("queued", 0, None, None)
    assert await refunds(conn, job_id) == 0
    assert await balance(conn, user) == START_BALANCE - 1
    assert metrics.registry.get_sample_value(
        "worker_config_pauses_total", {"code": "gemini_auth"}) == 1


async def test_bad_jobs_fail_readably_and_the_worker_goes_on(
        devstack: Devstack, conn: asyncpg.Connection, supabase_service: AsyncClient) -> None:
    user = await make_user(conn, START_BALANCE + 4)
    malformed = await insert_job(conn, user, {"complexity": "extreme", "text_prompt": "x"})
    missing = await insert_job(conn, user, {"asset_id": str(uuid.uuid4())})
    # supabase-js with ``params_json: JSON.stringify({...})``: a jsonb string, not an object.
    encoded_twice = await insert_job(conn, user, json.dumps({"text_prompt": "a lighthouse"}))
    listed = await insert_job(conn, user, [{"text_prompt": "a lighthouse"}])
    valid = await insert_job(conn, user, {"text_prompt": "a lighthouse"})
    bad = (malformed, missing, encoded_twice, listed)
    await run_worker_once(devstack)
    rows = {r["id"]: r for r in await conn.fetch(
        "select id, status, error, error_code from public.jobs where user_id = $1", user)}
    assert [(rows[j]["status"], rows[j]["error"]) for j in bad] == [
        ("failed", "The field complexity must be one of simple, standard, detailed."),
        ("failed", "The uploaded photo could not be found"),
        ("failed", "The job parameters arrived as a JSON string instead of an object"
                   " (encoded twice?)."),
        ("failed", "The job parameters are not an object (got an array).")]
    assert [rows[j]["error_code"] for j in (malformed, encoded_twice, listed)] == ["invalid_params"] * 3
    assert [await refunds(conn, j) for j in (*bad, valid)] == [1, 1, 1, 1, 0]
    await check_succeeded(conn, user, valid)
    await check_outputs(supabase_service, conn, user, valid)
    assert await balance(conn, user) == START_BALANCE + 4 - 1
    events = await conn.fetch("select delta, reason from public.credit_events"
                              " where user_id = $1 and job_id is not null", user)
    assert sorted(json.dumps(dict(e)) for e in events) == [
        json.dumps({"delta": 1, "reason": "generation_failed"})] * 4
    await run_worker_once(devstack)  # nothing left to do: no second refund
    assert [await refunds(conn, j) for j in (*bad, valid)] == [1, 1, 1, 1, 0]
    assert await balance(conn, user) == START_BALANCE + 4 - 1
