"""The app's API routes, replayed query by query through the official Python client.

Source: GitHub wayes-btye/scribblemachine at commit a081637, ``apps/web/app/api/**/route.ts``
(extracted at /work/app). Each function below is named after its route and carries, above each
step, the TypeScript call it mirrors, so that the two can be read side by side: the same tables,
columns, filters, ``params_json`` keys, buckets, signed-URL calls and answers (status + body).

What differs, and why:
- ``supabase.auth.getUser()`` is not replayed (the devstack has no GoTrue): the user is the
  ``sub`` of the JWT the client sends, which is what getUser would return.
- supabase-js answers ``{ data, error }`` where supabase-py raises; :func:`run` turns the raise
  back into the pair, so each route's error branches read as the app wrote them.
- supabase-js drops ``undefined`` properties when it serialises a body (``custom_prompt:
  customPrompt`` with no custom prompt sends no key); :data:`UNDEFINED` + :func:`js_object` do
  the same.
- postgrest-py's ``insert`` has no ``.select().single()``: the same POST with
  ``return=representation``, answered as an array that :func:`one` requires to hold one row, as
  ``.single()`` does.
- Next's handlers answer ``NextResponse.json(body, {status})`` or ``NextResponse.redirect(url)``
  (307): :class:`Answer`.

Two ways to create a job (``SignedIn.mode``): ``as_today`` runs each route's debit + insert
exactly as written; ``create_job`` replaces that debit + insert by one
``rpc('create_job', { p_params })`` (the contract's security-definer path), everything else
unchanged.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, cast

from postgrest.exceptions import APIError
from postgrest.types import CountMethod, ReturnMethod
from storage3.utils import StorageException
from supabase import AsyncClient

Mode = Literal["as_today", "create_job"]
Row = dict[str, Any]
UNDEFINED: Any = object()  # a JavaScript ``undefined``: the key is left out of the JSON body


class Executable(Protocol):
    def execute(self) -> Awaitable[Any]: ...


@dataclass(frozen=True)
class SignedIn:
    """A route's Supabase client: the anon key plus the signed-in user's JWT (RLS applies)."""

    client: AsyncClient
    user_id: str
    mode: Mode = "as_today"


@dataclass(frozen=True)
class Answer:
    """What the route hands to the browser."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)


def js_object(**fields: Any) -> Row:
    """An object literal as JSON.stringify sends it: ``undefined`` properties are dropped."""
    return {k: v for k, v in fields.items() if v is not UNDEFINED}


async def run(query: Executable) -> tuple[Any, Exception | None]:
    """``const { data, error } = await query``."""
    try:
        response = await query.execute()
    except APIError as error:
        return None, error
    return response.data, None


async def call(step: Awaitable[Any]) -> tuple[Any, Exception | None]:
    """``{ data, error }`` of a Storage call (storage3 raises on an error answer)."""
    try:
        return await step, None
    except StorageException as error:
        return None, error


def one(rows: Any) -> Row:
    """``.select().single()`` after an insert: exactly one row came back."""
    if not isinstance(rows, list) or len(rows) != 1:
        raise APIError({"code": "PGRST116", "message": f"insert answered {rows!r}, not one row"})
    return cast(Row, rows[0])


def pick(row: Row, *names: str) -> Row:
    return {name: row.get(name) for name in names}


JOB_FIELDS = ("id", "user_id", "status", "params_json", "cost_cents", "model", "started_at", "ended_at",
              "error", "created_at", "updated_at")


async def sign(app: SignedIn, bucket: str, path: str, expires_in: int) -> str | None:
    """``const { data } = await supabase.storage.from(bucket).createSignedUrl(path, expiresIn)``;
    ``data?.signedUrl``."""
    data, _ = await call(app.client.storage.from_(bucket).create_signed_url(path, expires_in))
    return cast(str, data["signedUrl"]) if data else None


async def create_job(app: SignedIn, job_params: Row) -> tuple[Row | None, Exception | None]:
    """The switched path: ``supabase.rpc('create_job', { p_params: jobParams })`` returns the job."""
    job, error = await run(app.client.rpc("create_job", {"p_params": job_params}))
    return (cast(Row, job) if job else None), error


# --- apps/web/app/api/credits/route.ts (GET) ---------------------------------------------------


async def credits_balance(app: SignedIn, columns: str = "balance") -> tuple[Any, Exception | None]:
    """``supabase.from('credits').select(columns).eq('user_id', user.id).single()`` (the credit
    check of the text, photo and edit routes selects 'balance'; the credits route 'balance, updated_at')."""
    return await run(app.client.from_("credits").select(columns).eq("user_id", app.user_id).single())


async def get_credits(app: SignedIn) -> Answer:
    credits, credits_error = await credits_balance(app, "balance, updated_at")
    if credits_error:
        return Answer(500, {"error": "Failed to fetch credits"})
    # .from('credit_events').select('delta, reason, created_at').eq('user_id', user.id)
    #   .order('created_at', { ascending: false }).limit(10)
    events, events_error = await run(
        app.client.from_("credit_events").select("delta, reason, created_at").eq("user_id", app.user_id)
        .order("created_at", desc=True).limit(10))
    return Answer(200, {"balance": (credits or {}).get("balance") or 0,
                        "updated_at": (credits or {}).get("updated_at"),
                        "recent_events": [] if events_error else events})


# --- apps/web/app/api/jobs/text/route.ts (POST) ------------------------------------------------


COMPLEXITIES, THICKNESSES = ("simple", "standard", "detailed"), ("thin", "medium", "thick")


async def post_jobs_text(app: SignedIn, text_prompt: str, complexity: str, line_thickness: str) -> Answer:
    valid = 5 <= len(text_prompt) <= 500 and complexity in COMPLEXITIES and line_thickness in THICKNESSES
    if not valid:  # zod: requestSchema.parse(body)
        return Answer(400, {"code": "VALIDATION_ERROR", "message": "Invalid request data"})
    credits, credits_error = await credits_balance(app)
    if credits_error or not credits or credits["balance"] < 1:
        return Answer(402, {"code": "INSUFFICIENT_CREDITS", "message": "Insufficient credits for generation"})
    job_params = {"text_prompt": text_prompt, "complexity": complexity, "line_thickness": line_thickness}
    if app.mode == "create_job":
        job, job_error = await create_job(app, job_params)
    else:
        # .rpc('increment_user_credits', { user_id: user.id, amount: -1 })
        _, deduct_error = await run(app.client.rpc("increment_user_credits",
                                                   {"user_id": app.user_id, "amount": -1}))
        if deduct_error:
            return Answer(500, {"code": "CREDIT_ERROR", "message": "Failed to deduct credits"})
        job, job_error = await _insert_text_job(app, job_params)
    if job_error or job is None:
        return Answer(500, {"code": "JOB_ERROR", "message": "Failed to create generation job"})
    return Answer(200, pick(job, *JOB_FIELDS))


async def _insert_text_job(app: SignedIn, job_params: Row) -> tuple[Row | None, Exception | None]:
    # .from('jobs').insert({ user_id, status: 'queued', params_json: jobParams, cost_cents: 100,
    #   model: 'gemini-2.5-flash-image-preview' }).select().single()
    rows, job_error = await run(app.client.from_("jobs").insert({
        "user_id": app.user_id, "status": "queued", "params_json": job_params,
        "cost_cents": 100, "model": "gemini-2.5-flash-image-preview"}))
    if job_error:
        # Refund credit on job creation failure: .rpc('increment_user_credits', { ..., amount: 1 })
        await run(app.client.rpc("increment_user_credits", {"user_id": app.user_id, "amount": 1}))
        return None, job_error
    return one(rows), None


# --- apps/web/app/api/upload/route.ts (POST) and the browser's upload ---------------------------


async def post_upload(app: SignedIn, filename: str, content_type: str, size: int) -> Answer:
    if not filename or not content_type or not size:
        return Answer(400, {"error": "Filename, content type, and size are required"})
    if size > 10 * 1024 * 1024:
        return Answer(400, {"error": "File size exceeds 10MB limit"})
    if content_type not in ("image/jpeg", "image/png", "image/heic", "image/heif"):
        return Answer(400, {"error": "Unsupported file type. Please upload JPEG, PNG, or HEIC images."})
    file_id = secrets.token_urlsafe(16)[:21]  # nanoid(): 21 characters of A-Za-z0-9_-
    storage_path = f"{app.user_id}/{file_id}.{filename.split('.')[-1]}"
    # supabase.storage.from('originals').createSignedUploadUrl(storagePath, { upsert: false })
    upload, upload_error = await call(
        app.client.storage.from_("originals").create_signed_upload_url(storage_path))
    if upload_error or not upload:
        return Answer(500, {"error": "Failed to create upload URL"})
    # .from('assets').insert({ user_id, kind: 'original', storage_path: storagePath, bytes: size })
    #   .select().single()
    rows, asset_error = await run(app.client.from_("assets").insert({
        "user_id": app.user_id, "kind": "original", "storage_path": storage_path, "bytes": size}))
    if asset_error:
        return Answer(500, {"error": "Failed to create asset record"})
    return Answer(200, {"assetId": one(rows)["id"], "uploadUrl": upload["signedUrl"],
                        "storagePath": storage_path})


async def browser_upload(app: SignedIn, answer: Answer, data: bytes, content_type: str) -> None:
    """The page then sends the file to ``uploadUrl``: ``uploadToSignedUrl(path, token, file)``
    (the token is the URL's ``token`` parameter; the browser code is not in the extract)."""
    token = answer.body["uploadUrl"].split("token=", 1)[1].split("&", 1)[0]
    await app.client.storage.from_("originals").upload_to_signed_url(
        answer.body["storagePath"], token, data, {"content-type": content_type})


# --- apps/web/app/api/jobs/route.ts (POST: a job from an uploaded photo) -------------------------


async def post_jobs(app: SignedIn, asset_id: str, complexity: str, line_thickness: str,
                    custom_prompt: str | None = None) -> Answer:
    if not asset_id or complexity not in COMPLEXITIES or line_thickness not in THICKNESSES:
        return Answer(400, {"error": "Asset ID, complexity, and line thickness are required"})
    credits, credits_error = await credits_balance(app)
    if credits_error or not credits or credits["balance"] < 1:
        return Answer(402, {"error": "Insufficient credits"})
    # .from('assets').select('*').eq('id', assetId).eq('user_id', user.id).eq('kind', 'original').single()
    asset, asset_error = await run(app.client.from_("assets").select("*").eq("id", asset_id)
                                   .eq("user_id", app.user_id).eq("kind", "original").single())
    if asset_error or not asset:
        return Answer(404, {"error": "Asset not found or access denied"})
    job_params = js_object(asset_id=asset_id, complexity=complexity, line_thickness=line_thickness,
                           custom_prompt=UNDEFINED if custom_prompt is None else custom_prompt)
    job, job_error = await _create(app, job_params, credits["balance"], "generation_queued")
    if job_error or job is None:
        return Answer(500, {"error": "Failed to create job"})
    return Answer(200, pick(job, *JOB_FIELDS))


async def _create(app: SignedIn, job_params: Row, balance: int,
                  reason: str) -> tuple[Row | None, Exception | None]:
    """The photo and edit routes' insert, then debit, then ledger row (or ``create_job``)."""
    if app.mode == "create_job":
        return await create_job(app, job_params)
    # .from('jobs').insert({ id: randomUUID(), user_id, status: 'queued', params_json }).select().single()
    rows, job_error = await run(app.client.from_("jobs").insert({
        "id": str(uuid.uuid4()), "user_id": app.user_id, "status": "queued", "params_json": job_params}))
    if job_error:
        return None, job_error
    # .from('credits').update({ balance: credits.balance - 1 }).eq('user_id', user.id)
    # (its error is only logged: "In production, this should trigger a rollback")
    await run(app.client.from_("credits").update({"balance": balance - 1}, returning=ReturnMethod.minimal)
              .eq("user_id", app.user_id))
    # .from('credit_events').insert({ user_id, delta: -1, reason })  (result not even read)
    await run(app.client.from_("credit_events").insert(
        {"user_id": app.user_id, "delta": -1, "reason": reason}, returning=ReturnMethod.minimal))
    return one(rows), None


# --- apps/web/app/api/jobs/[id]/route.ts (GET: the poller) --------------------------------------


async def job_of_user(app: SignedIn, job_id: str) -> tuple[Any, Exception | None]:
    """``.from('jobs').select('*').eq('id', jobId).eq('user_id', user.id).single()``: the first
    query of jobs/[id], /download, /edit, /versions and /pdf/export."""
    return await run(app.client.from_("jobs").select("*").eq("id", job_id).eq("user_id", app.user_id)
                     .single())


async def get_job(app: SignedIn, job_id: str) -> Answer:
    job, job_error = await job_of_user(app, job_id)
    if job_error or not job:
        return Answer(404, {"error": "Job not found"})
    download_urls: dict[str, str] = {}
    if job["status"] == "succeeded":
        # .from('assets').select('*').eq('user_id', user.id).in('kind', ['edge_map', 'pdf'])
        #   .like('storage_path', `%/${jobId}/%`)
        assets, assets_error = await run(
            app.client.from_("assets").select("*").eq("user_id", app.user_id)
            .in_("kind", ["edge_map", "pdf"]).like("storage_path", f"%/{job_id}/%"))
        for asset in [] if assets_error else assets:
            bucket = "artifacts" if asset["kind"] == "pdf" else "intermediates"
            url = await sign(app, bucket, asset["storage_path"], 3600)
            if url:
                download_urls[asset["kind"]] = url
    answer = pick(job, *(f for f in JOB_FIELDS if f != "user_id"))
    return Answer(200, answer | {"download_urls": download_urls})


# --- apps/web/app/api/jobs/[id]/download/route.ts (GET) -----------------------------------------


async def completed_job(app: SignedIn, job_id: str) -> Answer | None:
    """The 404 / 400 of /download and /pdf/export: ``job_of_user``, then ``status !== 'succeeded'``."""
    job, job_error = await job_of_user(app, job_id)
    if job_error or not job:
        return Answer(404, {"error": "Job not found"})
    if job["status"] != "succeeded":
        return Answer(400, {"error": "Job is not completed yet"})
    return None


async def latest_output(app: SignedIn, job_id: str, kind: str) -> tuple[Any, Exception | None]:
    """``.from('assets').select('storage_path').eq('user_id', user.id).eq('kind', kind)
    .like('storage_path', `${user.id}/${jobId}/%`).order('created_at', { ascending: false })
    .limit(1).single()``: /download (kind 'edge_map') and /pdf/export (kind 'pdf')."""
    return await run(
        app.client.from_("assets").select("storage_path").eq("user_id", app.user_id).eq("kind", kind)
        .like("storage_path", f"{app.user_id}/{job_id}/%").order("created_at", desc=True).limit(1).single())


async def get_job_download(app: SignedIn, job_id: str) -> Answer:
    refused = await completed_job(app, job_id)
    if refused:
        return refused
    edge_map, asset_error = await latest_output(app, job_id, "edge_map")
    if asset_error or not edge_map:
        return Answer(404, {"error": "Generated image not found"})
    url = await sign(app, "intermediates", edge_map["storage_path"], 3600)
    if not url:
        return Answer(500, {"error": "Failed to generate download URL"})
    return Answer(307, {"location": url})  # NextResponse.redirect(signedUrl)


# --- apps/web/app/api/jobs/[id]/edit/route.ts (POST) --------------------------------------------


UNSAFE_EDITS = ("nsfw", "nude", "sex", "violence", "blood", "weapon", "gun", "knife")


async def post_job_edit(app: SignedIn, job_id: str, edit_prompt: str) -> Answer:
    if not 3 <= len(edit_prompt) <= 200:
        return Answer(400, {"error": "Edit prompt must be between 3 and 200 characters"})
    if any(pattern in edit_prompt.lower() for pattern in UNSAFE_EDITS):
        return Answer(400, {"error": "Edit prompt contains inappropriate content"})
    original, job_error = await job_of_user(app, job_id)
    if job_error or not original:
        return Answer(404, {"error": "Original job not found or access denied"})
    if original["status"] != "succeeded":
        return Answer(400, {"error": "Can only edit completed jobs"})
    # .from('jobs').select('id').eq('user_id', user.id).contains('params_json', { edit_parent_id })
    edits, edits_error = await run(app.client.from_("jobs").select("id").eq("user_id", app.user_id)
                                   .contains("params_json", {"edit_parent_id": job_id}))
    if edits_error:
        return Answer(500, {"error": "Error checking edit history"})
    if len(edits or []) >= 2:
        return Answer(403, {"error": "Maximum of 2 edits per job allowed"})
    credits, credits_error = await credits_balance(app)
    if credits_error or not credits or credits["balance"] < 1:
        return Answer(402, {"error": "Insufficient credits for editing"})
    edge_map = await _edit_source(app, job_id)
    if edge_map is None:
        return Answer(404, {"error": "Original coloring page not found for editing"})
    return await _queue_edit(app, original, edge_map, edit_prompt, credits["balance"], len(edits or []))


async def _edit_source(app: SignedIn, job_id: str) -> Row | None:
    # .from('assets').select('*').eq('user_id', user.id).eq('kind', 'edge_map')
    #   .eq('storage_path', `${user.id}/${originalJobId}/edge.png`).order('created_at', desc).limit(1)
    assets, asset_error = await run(
        app.client.from_("assets").select("*").eq("user_id", app.user_id).eq("kind", "edge_map")
        .eq("storage_path", f"{app.user_id}/{job_id}/edge.png").order("created_at", desc=True).limit(1))
    if asset_error or not assets:
        # the route's debug query: .select('*').eq('user_id').eq('kind', 'edge_map').limit(10), logged
        await run(app.client.from_("assets").select("*").eq("user_id", app.user_id)
                  .eq("kind", "edge_map").limit(10))
        return None
    return cast(Row, assets[0])


async def _queue_edit(app: SignedIn, original: Row, edge_map: Row, edit_prompt: str, balance: int,
                      edit_count: int) -> Answer:
    parent = original["params_json"]
    params = js_object(edit_parent_id=original["id"], edit_prompt=edit_prompt,
                       edit_source_asset_id=edge_map["id"],
                       complexity=parent.get("complexity", UNDEFINED),
                       line_thickness=parent.get("line_thickness", UNDEFINED),
                       custom_prompt=parent.get("custom_prompt", UNDEFINED))
    job, job_error = await _create(app, params, balance, "edit_queued")
    if job_error or job is None:
        return Answer(500, {"error": "Failed to create edit job"})
    return Answer(200, pick(job, *JOB_FIELDS) | {"edit_count": edit_count + 1,
                                                  "edits_remaining": 1 - edit_count})


# --- apps/web/app/api/jobs/[id]/versions/route.ts (GET) ------------------------------------------


async def get_job_versions(app: SignedIn, job_id: str) -> Answer:
    requested, job_error = await job_of_user(app, job_id)
    if job_error or not requested:
        return Answer(404, {"error": "Job not found or access denied"})
    original = await _trace_original(app, requested)
    if original is None:
        return Answer(404, {"error": "Parent job not found in edit chain"})
    edits: list[Row] = []
    await _find_all_edits(app, original["id"], edits, set())
    versions = [await _version(app, original, "original", 0)]
    versions += [await _version(app, edit, "edit", i + 1) for i, edit in enumerate(edits)]
    succeeded = [v for v in versions if v["status"] == "succeeded"]
    return Answer(200, {"total_versions": len(succeeded), "original_job_id": original["id"],
                        "requested_job_id": job_id, "versions": succeeded,
                        "metadata": {"has_edits": bool(edits), "edit_count": len(edits), "max_edits": 2}})


async def _trace_original(app: SignedIn, job: Row) -> Row | None:
    """Follow ``params_json.edit_parent_id`` up, one ``job_of_user`` query a step."""
    while job["params_json"].get("edit_parent_id"):
        job, error = await job_of_user(app, job["params_json"]["edit_parent_id"])
        if error or not job:
            return None
    return job


async def _find_all_edits(app: SignedIn, parent_id: str, found: list[Row], seen: set[str]) -> None:
    # .from('jobs').select('*').eq('user_id', user.id).contains('params_json', { edit_parent_id })
    #   .order('created_at', { ascending: true })  (recursively, depth first)
    children, error = await run(app.client.from_("jobs").select("*").eq("user_id", app.user_id)
                                .contains("params_json", {"edit_parent_id": parent_id}).order("created_at"))
    for child in [] if error else children:
        if child["id"] not in seen:
            seen.add(child["id"])
            found.append(child)
            await _find_all_edits(app, child["id"], found, seen)


async def _version(app: SignedIn, job: Row, kind: str, order: int) -> Row:
    version = pick(job, "id", "status", "params_json", "cost_cents", "model", "started_at", "ended_at",
                   "created_at", "updated_at")
    version |= {"download_urls": await _version_urls(app, job["id"]), "version_type": kind,
                "version_order": order}
    if kind == "edit":
        version["edit_prompt"] = job["params_json"].get("edit_prompt")
    return version


async def _exact_asset(app: SignedIn, kind: str, path: str) -> Row | None:
    # .from('assets').select('*').eq('user_id', user.id).eq('kind', kind).eq('storage_path', path)
    #   .order('created_at', { ascending: false }).limit(1).single()
    asset, _ = await run(app.client.from_("assets").select("*").eq("user_id", app.user_id).eq("kind", kind)
                         .eq("storage_path", path).order("created_at", desc=True).limit(1).single())
    return cast(Row | None, asset)


async def _version_urls(app: SignedIn, job_id: str) -> dict[str, str]:
    folder = f"{app.user_id}/{job_id}"
    edge_map = await _exact_asset(app, "edge_map", f"{folder}/edge.png")
    # APP DEFECT: the route looks for `coloring-page.pdf`; the worker (and the old one) writes
    # `coloring_page.pdf` (DESIGN.md "Outputs"), so this never finds the PDF ...
    pdf = await _exact_asset(app, "pdf", f"{folder}/coloring-page.pdf")
    urls: dict[str, str] = {}
    # ... no edge_map row: the route signs `${user.id}/${job.id}/edge.png` directly (its fallback)
    edge_path = edge_map["storage_path"] if edge_map else f"{folder}/edge.png"
    edge_url = await sign(app, "intermediates", edge_path, 21600)
    if edge_url:
        urls["edge_map"] = edge_url
    if pdf:  # APP DEFECT: ... and would sign it in `intermediates`; PDFs live in `artifacts`.
        pdf_url = await sign(app, "intermediates", pdf["storage_path"], 21600)
        if pdf_url:
            urls["pdf"] = pdf_url
    return urls


# --- apps/web/app/api/pdf/export/route.ts (POST) ------------------------------------------------


async def post_pdf_export(app: SignedIn, job_id: str, paper_size: str) -> Answer:
    if paper_size not in ("A4", "LETTER"):
        return Answer(400, {"error": "Invalid paper size. Must be A4 or LETTER"})
    refused = await completed_job(app, job_id)
    if refused:
        return refused
    pdf, pdf_error = await latest_output(app, job_id, "pdf")
    if pdf_error or not pdf:
        return Answer(404, {"error": "PDF not found. The coloring page may still be processing or the PDF"
                                     " generation failed."})
    url = await sign(app, "artifacts", pdf["storage_path"], 3600)
    if not url:
        return Answer(500, {"error": "Failed to generate download URL"})
    return Answer(200, {"success": True, "pdfUrl": url, "expiresIn": 3600, "paperSize": paper_size,
                        "estimatedFileSize": "~500KB"})


# --- apps/web/app/api/gallery/route.ts (GET) ----------------------------------------------------


@dataclass(frozen=True)
class GalleryQuery:
    page: int = 1
    limit: int = 12
    sort_by: str = "created_at"
    sort_order: str = "desc"
    search: str = ""
    complexity: str = ""


async def get_gallery(app: SignedIn, q: GalleryQuery = GalleryQuery()) -> Answer:
    offset = (q.page - 1) * q.limit
    total, count_error = await _gallery_count(app, q)
    if count_error:
        return Answer(500, {"error": "Failed to fetch gallery count"})
    jobs, jobs_error = await _gallery_jobs(app, q, offset)
    if jobs_error:
        return Answer(500, {"error": "Failed to fetch gallery items"})
    if q.search:
        jobs = [j for j in jobs if q.search.lower() in (j["params_json"].get("text_prompt") or "").lower()
                or q.search.lower() in (j["params_json"].get("edit_prompt") or "").lower()][: q.limit]
    ids = [j["id"] for j in jobs]
    assets = {kind: _by_job(await _assets_of(app, kind, columns), ids)
              for kind, columns in (("edge_map", "*"), ("thumbnail", "id, storage_path"),
                                    ("pdf", "id, storage_path"))}
    items = [await _gallery_item(app, job, assets) for job in jobs]
    valid = [item for item in items if item is not None]
    if q.sort_by == "title":
        valid.sort(key=lambda item: item["title"] or "", reverse=q.sort_order != "asc")
    return Answer(200, {"items": valid, "pagination": {
        "page": q.page, "limit": q.limit, "total_count": total or 0,
        "has_more": bool(jobs) and offset + len(jobs) < (total or 0)}})


async def _gallery_count(app: SignedIn, q: GalleryQuery) -> tuple[int | None, Exception | None]:
    # .from('jobs').select('*', { count: 'exact', head: true }).eq('user_id', user.id)
    #   .eq('status', 'succeeded') [.eq('params_json->>complexity', complexityFilter)]
    query = (app.client.from_("jobs").select("*", count=CountMethod.exact, head=True)
             .eq("user_id", app.user_id).eq("status", "succeeded"))
    if q.complexity:
        query = query.eq("params_json->>complexity", q.complexity)
    try:
        return (await query.execute()).count, None
    except APIError as error:
        return None, error


async def _gallery_jobs(app: SignedIn, q: GalleryQuery, offset: int) -> tuple[list[Row], Exception | None]:
    # .from('jobs').select('id, status, params_json, created_at, ended_at').eq('user_id', user.id)
    #   .eq('status', 'succeeded') [.eq('params_json->>complexity', …)]
    #   .range(offset, offset + fetchLimit - 1) then .order('created_at', { ascending })
    query = (app.client.from_("jobs").select("id, status, params_json, created_at, ended_at")
             .eq("user_id", app.user_id).eq("status", "succeeded"))
    if q.complexity:
        query = query.eq("params_json->>complexity", q.complexity)
    fetch_limit = min(q.limit * 3, 150) if q.search else q.limit
    query = query.range(offset, offset + fetch_limit - 1)
    query.order("created_at", desc=q.sort_order != "asc")  # not reassigned in the route either
    jobs, error = await run(query)
    return list(jobs or []), error


async def _assets_of(app: SignedIn, kind: str, columns: str) -> list[Row]:
    # .from('assets').select(columns).eq('user_id', user.id).eq('kind', kind)  (errors only logged)
    assets, _ = await run(app.client.from_("assets").select(columns).eq("user_id", app.user_id)
                          .eq("kind", kind))
    return list(assets or [])


def _by_job(assets: list[Row], job_ids: list[str]) -> dict[str, Row]:
    """``jobIds.find(jobId => asset.storage_path?.includes(`/${jobId}/`))``; the last asset wins."""
    matched: dict[str, Row] = {}
    for asset in assets:
        job_id = next((j for j in job_ids if f"/{j}/" in (asset.get("storage_path") or "")), None)
        if job_id:
            matched[job_id] = asset
    return matched


async def _gallery_item(app: SignedIn, job: Row, assets: dict[str, dict[str, Row]]) -> Row | None:
    edge_map, thumbnail, pdf = (assets[k].get(job["id"]) for k in ("edge_map", "thumbnail", "pdf"))
    if edge_map is None:
        return None  # "No edge_map found for job": the job is left out of the gallery
    thumbnail_url = await sign(app, "intermediates", thumbnail["storage_path"], 3600) if thumbnail else None
    image_url = thumbnail_url or await sign(app, "intermediates", edge_map["storage_path"], 3600)
    if image_url is None:
        return None
    pdf_url = await sign(app, "artifacts", pdf["storage_path"], 3600) if pdf else None
    params = job["params_json"]
    return {"job_id": job["id"], "title": _title(job), "image_url": image_url, "pdf_url": pdf_url,
            "thumbnail_url": thumbnail_url, "created_at": job["created_at"],
            "complexity": params.get("complexity") or "standard",
            "line_thickness": params.get("line_thickness") or "medium", "has_pdf": pdf is not None}


def _title(job: Row) -> str | None:
    params = job["params_json"]
    for key in ("text_prompt", "edit_prompt"):
        if params.get(key):
            prompt = str(params[key]).strip()
            return f"{prompt[:50]}..." if len(prompt) > 50 else prompt
    if params.get("asset_id"):
        created = datetime.fromisoformat(job["created_at"])
        return f"Photo Upload - {created:%b} {created.day}"
    return None


# --- the app's cron: cleanup_storage_ttl() (supabase/migrations/20240101000002_storage_setup.sql)


async def cron_cleanup_storage_ttl(service: AsyncClient) -> None:
    """``select cleanup_storage_ttl()`` as a scheduled job runs it, with the service role."""
    await service.rpc("cleanup_storage_ttl", {}).execute()

