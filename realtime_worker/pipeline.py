"""The coloring-page pipeline: the job processor ``realtime-worker run`` uses by default.

One job: parse ``params_json`` → load the input photo or page (asset row, then Storage) →
prepare it (thread) → compose the prompt → generate (Gemini) → clean line art, thumbnail and
PDF (thread) → upload the three outputs concurrently (when one fails, remove the others this
attempt uploaded, best effort) → the :class:`JobResult` the dispatcher hands to
``worker_complete_job``. Every failure is a ``JobError``: bad input is permanent
with a message a user can read, outages of Storage or the database are retryable.

:func:`open_pipeline` is the processor factory: one Gemini client and one CPU limiter per
process, the Storage and assets adapters over the worker's Supabase client.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, TypeVar
from uuid import UUID

import anyio
import anyio.to_thread
from loguru import logger

from realtime_worker import imaging, limits, memory, paths, pdf_page, prompts
from realtime_worker.assets import AssetLookupError, Assets, SupabaseAssets
from realtime_worker.budget import BudgetedGenerator, SupabaseBudget, budget_settings
from realtime_worker.config import WorkerSettings
from realtime_worker.errors import ConfigError, JobError, PermanentJobError, RetryableJobError, StorageError
from realtime_worker.generator import GeminiGenerator, GeneratedImage, GenerationRequest, Generator
from realtime_worker.jobs import (
    AssetKind,
    AssetRecord,
    Job,
    JobKind,
    JobRequest,
    JobResult,
    PaperSize,
    parse_params,
)
from realtime_worker.metrics import Metrics
from realtime_worker.paths import ObjectPath, UnsafePath
from realtime_worker.queue import SupabaseQueue
from realtime_worker.run import Processor
from realtime_worker.storage import ObjectNotFound, Storage, StorageUnavailable, SupabaseStorage

if TYPE_CHECKING:
    from loguru import Logger

    from realtime_worker.worker import WorkerContext

T = TypeVar("T")

PNG = "image/png"
PDF = "application/pdf"
POINTS_PER_MM = 72 / 25.4
PREVIEW_CHARS = 40
_INPUT_NAMES = {JobKind.IMAGE: "uploaded photo", JobKind.EDIT: "page to edit"}


# --- errors a user may read ------------------------------------------------------------------


def input_not_found(kind: JobKind) -> PermanentJobError:
    return PermanentJobError(f"The {_INPUT_NAMES[kind]} could not be found", code="input_not_found")


def storage_failure(exc: StorageError, action: str) -> JobError:
    """Retry an outage; anything else Storage refused will not get better by itself."""
    if isinstance(exc, StorageUnavailable):
        return RetryableJobError("File storage is unavailable",
                                 code="storage_unavailable")
    logger.bind(event="storage_refused", action=action).error("Storage refused: {}", exc)
    return PermanentJobError("The page could not be stored", code="storage_refused")


# --- outputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """One file to upload and record."""

    kind: AssetKind
    data: bytes
    content_type: str
    width: int
    height: int

    def record(self, path: ObjectPath) -> AssetRecord:
        return AssetRecord(kind=self.kind, storage_path=path.name, bytes=len(self.data),
                           width=self.width, height=self.height,
                           hash=hashlib.sha256(self.data).hexdigest())


def pdf_points(paper: PaperSize, landscape: bool) -> tuple[int, int]:
    """The PDF page size in points, as ``pdf_page.make_pdf`` lays it out."""
    short, long = (round(mm * POINTS_PER_MM) for mm in pdf_page.PAPER_MM[paper])
    return (long, short) if landscape else (short, long)


def render_outputs(generated: bytes, paper: PaperSize, title: str | None, clean: bool,
                   max_pixels: int = limits.MAX_OUTPUT_PIXELS) -> tuple[Output, Output, Output]:
    """Cleaned page, thumbnail and PDF of a generated image (CPU-bound: run in a thread)."""
    page = imaging.clean_line_art(generated, clean=clean, max_pixels=max_pixels)
    thumb = imaging.make_thumbnail(page.png)
    pdf = pdf_page.make_pdf(page.png, paper=paper, title=title)
    return (Output(AssetKind.EDGE_MAP, page.png, PNG, page.width, page.height),
            Output(AssetKind.THUMBNAIL, thumb.png, PNG, thumb.width, thumb.height),
            Output(AssetKind.PDF, pdf, PDF, *pdf_points(paper, page.width > page.height)))


def prepare_input(data: bytes, kind: JobKind,
                  limits: imaging.InputLimits = imaging.DEFAULT_INPUT_LIMITS) -> bytes:
    """The input as the generator gets it (≤1024 px JPEG, pixels only); errors name what the
    user sent."""
    return imaging.prepare_input_photo(data, name=_INPUT_NAMES[kind], limits=limits)


def image_step(func: Callable[[], T]) -> T:
    """Run one image step, then give the memory it freed back to the system."""
    try:
        return func()
    finally:
        memory.release()


def input_asset_id(request: JobRequest) -> UUID | None:
    if request.kind is JobKind.IMAGE:
        return request.asset_id
    if request.kind is JobKind.EDIT:
        return request.edit_source_asset_id
    return None


def user_text(request: JobRequest) -> str:
    return request.edit_prompt or request.text_prompt or request.custom_prompt or ""


# --- the processor ---------------------------------------------------------------------------


class Pipeline:
    """Turns one job into its three outputs; raises ``JobError`` subclasses only."""

    def __init__(self, *, generator: Generator, storage: Storage, assets: Assets,
                 settings: WorkerSettings, metrics: Metrics,
                 limiter: anyio.CapacityLimiter) -> None:
        self._generator, self._storage, self._assets = generator, storage, assets
        self._settings, self._metrics, self._limiter = settings, metrics, limiter

    async def __call__(self, job: Job) -> JobResult:
        request = parse_params(job.params)
        log = logger.bind(job_id=str(job.id), kind=request.kind.value)
        image = await self._input(job, request, log)
        generated = await self._generate(job.id, request, image, log)
        outputs = await self._render(generated.data, request, log)
        records = await self._upload(job, outputs, log)
        return self._result(generated, records, log)

    async def _in_thread(self, func: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(partial(image_step, func), limiter=self._limiter)

    # --- input -------------------------------------------------------------------------------

    async def _input(self, job: Job, request: JobRequest, log: Logger) -> bytes | None:
        asset_id = input_asset_id(request)
        if asset_id is None:
            return None
        source = await self._locate(job, request.kind, asset_id, log)
        data = await self._download(source, request.kind)
        limits = imaging.InputLimits(self._settings.max_input_bytes,
                                     self._settings.max_input_pixels)
        prepared = await self._in_thread(partial(prepare_input, data, request.kind, limits))
        log.bind(event="input_loaded", asset_id=str(asset_id), input_bytes=len(data),
                 prepared_bytes=len(prepared)).info("input loaded")
        return prepared

    async def _locate(self, job: Job, kind: JobKind, asset_id: UUID, log: Logger) -> ObjectPath:
        try:
            row = await self._assets.get(asset_id)
        except AssetLookupError as exc:
            raise RetryableJobError("The job's input could not be looked up",
                                    code="database_unavailable") from exc
        if row is None or row.user_id != job.user_id:
            log.bind(event="input_not_found", asset_id=str(asset_id),
                     found=row is not None).warning("input asset missing or not the user's")
            raise input_not_found(kind)
        try:
            return paths.input_path(row.storage_path, row.kind, job.user_id)
        except UnsafePath as exc:
            log.bind(event="input_path_refused", asset_id=str(asset_id)).warning(str(exc))
            raise input_not_found(kind) from exc

    async def _download(self, source: ObjectPath, kind: JobKind) -> bytes:
        try:
            return await self._storage.download(source)
        except ObjectNotFound as exc:
            raise input_not_found(kind) from exc
        except StorageError as exc:
            raise storage_failure(exc, "download") from exc

    # --- generation --------------------------------------------------------------------------

    async def _generate(self, job_id: UUID, request: JobRequest, image: bytes | None,
                        log: Logger) -> GeneratedImage:
        prompt = prompts.compose(request)
        log.bind(event="generation_started", prompt_chars=len(prompt.text),
                 with_image=image is not None).debug(
            "generating; user text starts {!r}", user_text(request)[:PREVIEW_CHARS])
        started = time.monotonic()
        generated = await self._generator.generate(GenerationRequest(
            text=prompt.text, system_instruction=prompt.system_instruction, image=image,
            image_mime="image/jpeg", aspect_ratio=prompts.ASPECT_RATIO, job_id=job_id))
        latency = time.monotonic() - started
        self._metrics.generation.observe(latency)
        log.bind(event="generation_done", model=generated.model,
                 generation_ms=round(latency * 1000), output_bytes=len(generated.data),
                 mime_type=generated.mime_type, input_tokens=generated.input_tokens,
                 output_tokens=generated.output_tokens).info("page generated")
        return generated

    # --- outputs -----------------------------------------------------------------------------

    async def _render(self, generated: bytes, request: JobRequest,
                      log: Logger) -> tuple[Output, ...]:
        started = time.monotonic()
        outputs = await self._in_thread(partial(
            render_outputs, generated, request.paper_size, request.title,
            self._settings.clean_line_art, self._settings.max_output_pixels))
        sizes = {o.kind.value: f"{o.width}x{o.height}/{len(o.data)}B" for o in outputs}
        log.bind(event="page_rendered", render_ms=round((time.monotonic() - started) * 1000),
                 paper=request.paper_size.value, **sizes).info("page cleaned, thumbnail and PDF made")
        return outputs

    async def _upload(self, job: Job, outputs: tuple[Output, ...],
                      log: Logger) -> tuple[AssetRecord, ...]:
        placed = [(o, paths.output_path(o.kind, job.user_id, job.id)) for o in outputs]
        uploaded: list[ObjectPath] = []
        failures: list[StorageError] = []
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for output, path in placed:
                tg.start_soon(self._put, output, path, uploaded, failures)
        if failures:
            await self._remove(uploaded, log)
            raise storage_failure(failures[0], "upload") from failures[0]
        log.bind(event="outputs_uploaded",
                 upload_ms=round((time.monotonic() - started) * 1000)).info("outputs uploaded")
        return tuple(output.record(path) for output, path in placed)

    async def _put(self, output: Output, path: ObjectPath, uploaded: list[ObjectPath],
                   failures: list[StorageError]) -> None:
        try:
            await self._storage.upload(path, output.data, output.content_type)
        except StorageError as exc:
            failures.append(exc)
        else:
            uploaded.append(path)

    async def _remove(self, uploaded: list[ObjectPath], log: Logger) -> None:
        """Best effort: no half set of outputs of a failed job where the app looks for them.

        A removal that fails is logged; the upload's error is the one the job fails with.
        """
        removed = 0
        for path in uploaded:
            try:
                await self._storage.remove(path)
            except StorageError as exc:
                log.bind(event="upload_cleanup_failed", path=path.qualified).warning(
                    "could not remove an output of the failed upload: {}", exc)
            else:
                removed += 1
        log.bind(event="upload_cleaned_up", removed=removed, uploaded=len(uploaded)).info(
            "removed {} of {} outputs the failed upload left", removed, len(uploaded))

    def _result(self, generated: GeneratedImage, records: tuple[AssetRecord, ...],
                log: Logger) -> JobResult:
        model = generated.model or self._settings.gemini_model
        cost = self._settings.cost_cents(model)
        log.bind(event="pipeline_done", model=model, cost_cents=cost).info("page ready")
        return JobResult(model=model, cost_cents=cost, assets=records)


# --- the factory -----------------------------------------------------------------------------


def gemini_generator(settings: WorkerSettings) -> GeminiGenerator:
    return GeminiGenerator(settings.gemini_api_key.get_secret_value(), settings.gemini_model,
                           settings.gemini_base_url, settings.gemini_timeout_seconds)


def budgeted(generator: Generator, context: WorkerContext) -> Generator:
    """The generator behind the fleet's Gemini budget when GEMINI_RPM is set (docs/scaling.md)."""
    s = context.settings
    if s.gemini_rpm <= 0:
        return generator
    if context.rpc is None:
        raise ConfigError("configuration error: GEMINI_RPM needs the worker's RPC adapter")
    rpc = SupabaseQueue(context.rpc, context.metrics).call
    return BudgetedGenerator(generator, SupabaseBudget(rpc), budget_settings(s), s.worker_id,
                             context.prepaid)


@asynccontextmanager
async def open_pipeline(context: WorkerContext) -> AsyncIterator[Processor]:
    """The default processor factory: one Gemini client and one CPU limiter for the process."""
    settings = context.settings
    generator = budgeted(gemini_generator(settings), context)
    logger.bind(event="pipeline_ready", model=settings.gemini_model, gemini_rpm=settings.gemini_rpm,
                image_threads=settings.image_threads,
                clean_line_art=settings.clean_line_art).info("pipeline ready")
    try:
        yield Pipeline(generator=generator, storage=SupabaseStorage(context.supabase),
                       assets=SupabaseAssets(context.supabase), settings=settings,
                       metrics=context.metrics,
                       limiter=anyio.CapacityLimiter(settings.image_threads))
    finally:
        with anyio.CancelScope(shield=True):
            await generator.aclose()

