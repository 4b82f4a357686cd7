"""The pipeline on in-memory Storage and assets with a fake Generator: kinds, defaults, bad input.

The generator here implements the ``Generator`` protocol and answers with a page from
``fixtures/pages``; imaging is the real one. A hypothesis test pushes random ``params_json``
through the real dispatcher and ``InMemoryQueue``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import anyio
import anyio.lowlevel
import httpx
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from loguru import logger
from PIL import Image
from pypdf import PdfReader
from storage3.exceptions import StorageApiError

from realtime_worker import config, imaging, prompts
from realtime_worker.assets import AssetRow
from realtime_worker.config import WorkerSettings
from realtime_worker.dispatcher import Dispatcher, DispatcherSettings
from realtime_worker.errors import JobError, PermanentJobError, RetryableJobError, StorageError
from realtime_worker.generator import GeneratedImage, GenerationRequest
from realtime_worker.jobs import AssetKind, Backoff, Complexity, Job, JobResult, JobStatus, LineThickness
from realtime_worker.metrics import Metrics
from realtime_worker.paths import ObjectPath, UnsafePath, input_path, output_path
from realtime_worker.pipeline import Pipeline
from realtime_worker.storage import ObjectNotFound, StorageUnavailable, SupabaseStorage
from realtime_worker.testing import InMemoryAssets, InMemoryQueue, InMemoryStorage

if TYPE_CHECKING:
    from loguru import Message

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
PAGE = (FIXTURES / "pages" / "clean.png").read_bytes()
PHOTO = (FIXTURES / "photos" / "sample_photo.jpg").read_bytes()
NOT_AN_IMAGE = (FIXTURES / "photos" / "not_an_image.jpg").read_bytes()
MODEL = "gemini-3.1-flash-image"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PHOTO_NOT_FOUND = "The uploaded photo could not be found"
PAGE_NOT_FOUND = "The page to edit could not be found"


@cache
def small_page() -> bytes:
    """clean.png at 256x256: the same drawing, a tenth of the work (for many examples)."""
    out = io.BytesIO()
    Image.open(io.BytesIO(PAGE)).resize((256, 256)).save(out, format="PNG")
    return out.getvalue()


def png_of(size: tuple[int, int], colour: int = 255) -> bytes:
    out = io.BytesIO()
    Image.new("L", size, colour).save(out, format="PNG")
    return out.getvalue()


class FakeGenerator:
    """The ``Generator`` port: answers with a fixture page, or raises what it is told."""

    def __init__(self, page: bytes = PAGE, error: Exception | None = None) -> None:
        self.page, self.error = page, error
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        self.requests.append(request)
        await anyio.lowlevel.checkpoint()
        if self.error is not None:
            raise self.error
        return GeneratedImage(data=self.page, mime_type="image/png", model=MODEL,
                              input_tokens=12, output_tokens=1120, latency_seconds=0.0)

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


def make_settings(**overrides: Any) -> WorkerSettings:
    values = {"SUPABASE_URL": "http://127.0.0.1:9", "SUPABASE_SERVICE_ROLE_KEY": "service-key",
              "GEMINI_API_KEY": "gemini-key", "GEMINI_MODEL": "gemini-3.1-flash-lite-image",
              "IMAGE_THREADS": 2, "CLEAN_LINE_ART": True, **overrides}
    return config.load(WorkerSettings, **values)


@dataclass
class World:
    """One user's Storage and assets, a generator and the pipeline over them."""

    user: UUID = field(default_factory=uuid4)
    storage: InMemoryStorage = field(default_factory=InMemoryStorage)
    assets: InMemoryAssets = field(default_factory=InMemoryAssets)
    generator: FakeGenerator = field(default_factory=FakeGenerator)
    metrics: Metrics = field(default_factory=Metrics)
    settings: WorkerSettings = field(default_factory=make_settings)

    def pipeline(self) -> Pipeline:
        return Pipeline(generator=self.generator, storage=self.storage, assets=self.assets,
                        settings=self.settings, metrics=self.metrics,
                        limiter=anyio.CapacityLimiter(2))

    def job(self, params: dict[str, Any]) -> Job:
        return Job(id=uuid4(), user_id=self.user, status=JobStatus.RUNNING, params=params,
                   attempts=1, max_attempts=3)

    def upload(self, data: bytes = PHOTO, *, kind: AssetKind = AssetKind.ORIGINAL,
               owner: UUID | None = None, stored_as: str | None = None,
               object_at: ObjectPath | None = None) -> UUID:
        """An object plus its asset row, as the app creates them; returns the asset id."""
        owner = owner or self.user
        where = object_at or (ObjectPath("originals", f"{owner}/photo.jpg")
                              if kind is AssetKind.ORIGINAL
                              else ObjectPath("intermediates", f"{owner}/{uuid4()}/edge.png"))
        self.storage.put(where, data)
        return self.assets.add(owner, kind, stored_as or where.name)

    async def run(self, params: dict[str, Any]) -> tuple[Job, JobResult]:
        job = self.job(params)
        with anyio.fail_after(10):
            return job, await self.pipeline()(job)

    async def fails(self, params: dict[str, Any]) -> JobError:
        with pytest.raises(JobError) as caught:
            await self.run(params)
        return caught.value


@pytest.fixture
def world() -> World:
    return World()


def stored(world: World, job: Job, kind: AssetKind) -> tuple[bytes, str]:
    path = output_path(kind, job.user_id, job.id)
    return world.storage.objects[(path.bucket, path.name)]


def pdf_size(data: bytes) -> tuple[float, float]:
    box = PdfReader(io.BytesIO(data)).pages[0].mediabox
    return float(box.width), float(box.height)


# -- each kind --------------------------------------------------------------------------------


async def test_text_job_makes_the_three_outputs_where_the_app_looks(world: World) -> None:
    job, result = await world.run({"text_prompt": "a tiger eating a burger"})
    assert result.model == MODEL and result.cost_cents == world.settings.cost_cents(MODEL) == 7
    assert [a.kind for a in result.assets] == [AssetKind.EDGE_MAP, AssetKind.THUMBNAIL, AssetKind.PDF]
    assert [a.storage_path for a in result.assets] == [  # bucket-relative: the app's form
        f"{world.user}/{job.id}/edge.png",
        f"{world.user}/{job.id}/thumbnail.png",
        f"{world.user}/{job.id}/coloring_page.pdf"]
    for record in result.assets:
        data, content_type = stored(world, job, record.kind)
        assert record.bytes == len(data) and record.hash == hashlib.sha256(data).hexdigest()
        assert content_type == ("application/pdf" if record.kind is AssetKind.PDF else "image/png")
    edge, thumb = (Image.open(io.BytesIO(stored(world, job, k)[0]))
                   for k in (AssetKind.EDGE_MAP, AssetKind.THUMBNAIL))
    sizes = [(a.width, a.height) for a in result.assets]
    assert (edge.mode, edge.size) == ("1", (1024, 1024)) and sizes[0] == edge.size
    assert max(thumb.size) <= 400 and sizes[1] == thumb.size
    assert stored(world, job, AssetKind.PDF)[0].startswith(b"%PDF-")
    request = world.generator.requests[0]
    assert request.image is None and request.aspect_ratio == "3:4"
    assert "a tiger eating a burger" in request.text
    assert world.metrics.registry.get_sample_value("worker_generation_seconds_count") == 1


async def test_image_job_sends_the_prepared_photo(world: World) -> None:
    asset = world.upload(stored_as=f"{world.user}/photo.jpg")  # as the app's upload route stores it
    job, result = await world.run({"asset_id": str(asset), "complexity": "simple"})
    assert world.generator.requests[0].image == imaging.prepare_input_photo(PHOTO)
    assert world.generator.requests[0].image_mime == "image/jpeg"
    assert prompts.AGE_BANDS[Complexity.SIMPLE] in world.generator.requests[0].text
    assert len(result.assets) == 3 and stored(world, job, AssetKind.PDF)


async def test_edit_job_sends_the_source_page(world: World) -> None:
    source = world.upload(PAGE, kind=AssetKind.EDGE_MAP)
    params = {"edit_parent_id": str(uuid4()), "edit_prompt": "add a party hat",
              "edit_source_asset_id": str(source), "text_prompt": "ignored for edits"}
    _, result = await world.run(params)
    request = world.generator.requests[0]
    assert request.image == imaging.prepare_input_photo(PAGE)
    assert "add a party hat" in request.text and "ignored for edits" not in request.text
    assert len(result.assets) == 3


async def test_defaults_standard_medium_a4(world: World) -> None:
    job, result = await world.run({"text_prompt": "a fox"})
    text = world.generator.requests[0].text
    assert prompts.AGE_BANDS[Complexity.STANDARD] in text
    assert prompts.LINE_WEIGHTS[LineThickness.MEDIUM] in text
    width, height = pdf_size(stored(world, job, AssetKind.PDF)[0])
    assert (round(width), round(height)) == (595, 842)
    assert (result.assets[2].width, result.assets[2].height) == (595, 842)


async def test_letter_paper_thick_lines_and_title(world: World) -> None:
    params = {"text_prompt": "a fox", "paper_size": "Letter", "line_thickness": "thick",
              "title": "Foxy Friday"}
    job, result = await world.run(params)
    pdf = stored(world, job, AssetKind.PDF)[0]
    assert tuple(round(v) for v in pdf_size(pdf)) == (612, 792)
    assert (result.assets[2].width, result.assets[2].height) == (612, 792)
    assert "Foxy Friday" in PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    assert prompts.LINE_WEIGHTS[LineThickness.THICK] in world.generator.requests[0].text


@pytest.mark.parametrize("clean", [True, False])
async def test_clean_line_art_setting(clean: bool) -> None:
    grey_page = (FIXTURES / "pages" / "greyish.png").read_bytes()
    world = World(generator=FakeGenerator(grey_page), settings=make_settings(CLEAN_LINE_ART=clean))
    job, _ = await world.run({"text_prompt": "a fox"})
    edge = Image.open(io.BytesIO(stored(world, job, AssetKind.EDGE_MAP)[0])).convert("L")
    grey_levels = {level for level, count in enumerate(edge.histogram()) if count and 0 < level < 255}
    assert bool(grey_levels) is not clean


# -- invalid input: permanent, readable, and nothing spent on Gemini ---------------------------

Setup = Callable[[World], dict[str, Any]]


def foreign_asset(world: World) -> dict[str, Any]:
    return {"asset_id": str(world.upload(owner=uuid4()))}


def foreign_row_in_own_folder(world: World) -> dict[str, Any]:
    asset = world.upload()
    world.assets.rows[asset] = replace(world.assets.rows[asset], user_id=uuid4())
    return {"asset_id": str(asset)}


def photo_in_foreign_folder(world: World) -> dict[str, Any]:
    other = uuid4()
    asset = world.upload(object_at=ObjectPath("originals", f"{other}/photo.jpg"))
    assert world.assets.rows[asset].user_id == world.user  # the row is the user's, the object not
    return {"asset_id": str(asset)}


def row_without_object(world: World) -> dict[str, Any]:
    return {"asset_id": str(world.assets.add(world.user, AssetKind.ORIGINAL,
                                              f"{world.user}/gone.jpg"))}


def stored_path(path: Callable[[UUID], str]) -> Setup:
    return lambda w: {"asset_id": str(w.upload(stored_as=path(w.user)))}


def huge_photo(world: World) -> dict[str, Any]:
    return {"asset_id": str(world.upload(png_of((6000, 4001))))}


def edit_of(data: bytes | None) -> Setup:
    def setup(world: World) -> dict[str, Any]:
        source = world.upload(data, kind=AssetKind.EDGE_MAP) if data else uuid4()
        return {"edit_parent_id": str(uuid4()), "edit_prompt": "add a hat",
                "edit_source_asset_id": str(source)}
    return setup


INVALID: dict[str, tuple[Setup, str]] = {
    "unknown complexity": (lambda w: {"text_prompt": "x", "complexity": "extreme"},
                           "The field complexity must be one of simple, standard, detailed."),
    "unknown paper": (lambda w: {"text_prompt": "x", "paper_size": "A3"},
                      "The field paper_size must be one of A4, Letter."),
    "line thickness not text": (lambda w: {"text_prompt": "x", "line_thickness": 3},
                                "The field line_thickness must be one of thin, medium, thick."),
    "nothing to draw": (lambda w: {"title": "only a title"},
                        "The job has nothing to draw: give a text prompt, a photo or an edit."),
    "prompt over 2000": (lambda w: {"text_prompt": "x" * 2001},
                         "The field text_prompt is longer than 2000 characters."),
    "asset id not a uuid": (lambda w: {"asset_id": "../etc/passwd"},
                            "The field asset_id is not a valid id."),
    "missing asset row": (lambda w: {"asset_id": str(uuid4())}, PHOTO_NOT_FOUND),
    "missing object": (row_without_object, PHOTO_NOT_FOUND),
    "asset of another user": (foreign_asset, PHOTO_NOT_FOUND),
    "asset row of another user": (foreign_row_in_own_folder, PHOTO_NOT_FOUND),
    "object in another user's folder": (photo_in_foreign_folder, PHOTO_NOT_FOUND),
    "dot-dot path": (stored_path(lambda u: f"{u}/../{uuid4()}/photo.jpg"), PHOTO_NOT_FOUND),
    "encoded dot-dot path": (stored_path(lambda u: f"{u}/%2e%2e/x/photo.jpg"), PHOTO_NOT_FOUND),
    "absolute path": (stored_path(lambda u: f"/{u}/photo.jpg"), PHOTO_NOT_FOUND),
    "path with its bucket": (stored_path(lambda u: f"originals/{u}/photo.jpg"), PHOTO_NOT_FOUND),
    "corrupt upload": (lambda w: {"asset_id": str(w.upload(NOT_AN_IMAGE))},
                       "The uploaded photo could not be read"),
    "over 24 MP": (huge_photo, "The uploaded photo is too large (at most 24 megapixels)"),
    "missing edit source": (edit_of(None), PAGE_NOT_FOUND),
    "corrupt edit source": (edit_of(NOT_AN_IMAGE), "The page to edit could not be read"),
    "edit source over 24 MP": (edit_of(png_of((6000, 4001))),
                               "The page to edit is too large (at most 24 megapixels)"),
}


@pytest.mark.parametrize("case", INVALID)
async def test_invalid_input_is_permanent_and_readable(world: World, case: str) -> None:
    setup, message = INVALID[case]
    params = setup(world)
    before = dict(world.storage.objects)
    error = await world.fails(params)
    assert isinstance(error, PermanentJobError) and error.user_message == message
    assert world.generator.requests == [] and world.storage.objects == before


# -- params_json that is not an object (as the queue reads it) -------------------------------


@pytest.mark.parametrize(("params_json", "message"), [
    # supabase-js with ``params_json: JSON.stringify({...})`` stores a jsonb string.
    ('{"text_prompt": "a fox"}',
     "The job parameters arrived as a JSON string instead of an object (encoded twice?)."),
    ([{"text_prompt": "a fox"}], "The job parameters are not an object (got an array)."),
    ("a fox", "The job parameters are not an object (got a string)."),
    ('["a fox"]', "The job parameters are not an object (got a string)."),
    (42, "The job parameters are not an object (got a number)."),
    (True, "The job parameters are not an object (got a boolean)."),
    (None, "The job parameters are not an object (got null)."),
])
async def test_params_json_not_an_object_is_named(world: World, params_json: object,
                                                  message: str) -> None:
    job = Job.from_row({"id": str(uuid4()), "user_id": str(world.user), "status": "running",
                        "params_json": params_json, "attempts": 1, "max_attempts": 3})
    with pytest.raises(PermanentJobError) as caught:
        await world.pipeline()(job)
    assert (caught.value.user_message, caught.value.code) == (message, "invalid_params")
    assert world.generator.requests == [] and world.storage.objects == {}


# -- outages and refusals ---------------------------------------------------------------------


async def test_storage_outage_on_download_is_retryable(world: World) -> None:
    asset = world.upload()
    world.storage.unavailable = True
    error = await world.fails({"asset_id": str(asset)})
    assert isinstance(error, RetryableJobError) and error.code == "storage_unavailable"


async def test_storage_outage_on_upload_is_retryable(world: World) -> None:
    world.storage.unavailable = True
    error = await world.fails({"text_prompt": "a fox"})
    assert isinstance(error, RetryableJobError) and error.code == "storage_unavailable"
    assert len(world.generator.requests) == 1


async def test_refused_upload_is_permanent(world: World) -> None:
    world.storage.refuse_uploads = True
    error = await world.fails({"text_prompt": "a fox"})
    assert isinstance(error, PermanentJobError) and error.code == "storage_refused"


class RefusingStorage(InMemoryStorage):
    """In-memory Storage that refuses (or loses) uploads to one file name, and may fail removes."""

    def __init__(self, file: str, error: StorageError, *, removes_fail: bool = False) -> None:
        super().__init__()
        self.file, self.error, self.removes_fail = file, error, removes_fail
        self.removed: list[ObjectPath] = []

    async def upload(self, path: ObjectPath, data: bytes, content_type: str) -> None:
        if path.name.endswith(f"/{self.file}"):
            await anyio.sleep(0.01)  # after the other uploads have landed
            raise self.error
        await super().upload(path, data, content_type)

    async def remove(self, path: ObjectPath) -> None:
        self.removed.append(path)
        if self.removes_fail:
            raise StorageUnavailable(f"remove of {path.qualified} failed: 503")
        await super().remove(path)


@pytest.mark.parametrize(("file", "error", "expected"), [
    ("coloring_page.pdf", StorageError("upload failed: 403 Unauthorized"), PermanentJobError),
    ("edge.png", StorageError("upload failed: 413 EntityTooLarge"), PermanentJobError),
    ("thumbnail.png", StorageUnavailable("upload failed: 503"), RetryableJobError),
])
async def test_a_failed_upload_removes_what_the_attempt_uploaded(
        file: str, error: StorageError, expected: type[JobError]) -> None:
    storage = RefusingStorage(file, error)
    world = World(storage=storage)
    world.upload()  # the user's photo: not the job's to remove
    error_raised = await world.fails({"text_prompt": "a fox"})
    assert type(error_raised) is expected and error_raised.__cause__ is error
    assert list(storage.objects) == [("originals", f"{world.user}/photo.jpg")]
    assert len(storage.removed) == 2


async def test_a_failed_removal_is_logged_not_raised_over_the_upload_error(
        records: list[dict[str, Any]]) -> None:
    refused = StorageError("upload failed: 403 Unauthorized")
    storage = RefusingStorage("coloring_page.pdf", refused, removes_fail=True)
    error = await World(storage=storage).fails({"text_prompt": "a fox"})
    assert isinstance(error, PermanentJobError) and error.__cause__ is refused
    assert len(storage.objects) == 2  # both PNGs stay: removal was only best effort
    left = [r for r in records if r.get("event") == "upload_cleanup_failed"]
    assert sorted(r["path"] for r in left) == sorted(p.qualified for p in storage.removed)
    assert all(r["level"] == "WARNING" for r in left) and len(left) == 2


async def test_assets_table_outage_is_retryable(world: World) -> None:
    world.assets.unavailable = True
    error = await world.fails({"asset_id": str(uuid4())})
    assert isinstance(error, RetryableJobError) and error.code == "database_unavailable"


async def test_generator_errors_pass_through_unchanged() -> None:
    limited = RetryableJobError("Gemini is rate limiting us", code="rate_limited", retry_after=7.0)
    world = World(generator=FakeGenerator(error=limited))
    assert await world.fails({"text_prompt": "a fox"}) is limited
    assert world.storage.objects == {}


async def test_blank_output_is_unusable_and_nothing_is_uploaded() -> None:
    world = World(generator=FakeGenerator(png_of((512, 512))))
    error = await world.fails({"text_prompt": "a fox"})
    assert isinstance(error, RetryableJobError) and error.code == "unusable_output"
    assert world.storage.objects == {}


# -- logs -------------------------------------------------------------------------------------


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    captured: list[dict[str, Any]] = []

    def sink(message: Message) -> None:
        record = message.record
        captured.append({"level": record["level"].name, "message": record["message"],
                         **record["extra"]})

    handler = logger.add(sink, level="DEBUG")
    try:
        yield captured
    finally:
        logger.remove(handler)


async def test_logs_carry_ids_and_figures_never_the_prompt(
        world: World, records: list[dict[str, Any]]) -> None:
    secret_subject = "zebra-unicorn XYZZY riding a tandem bicycle through Paris at dawn"
    job, _ = await world.run({"text_prompt": secret_subject})
    mine = [r for r in records if r.get("job_id") == str(job.id)]
    events = {r["event"]: r for r in mine}
    assert {"generation_done", "page_rendered", "outputs_uploaded", "pipeline_done"} <= set(events)
    assert events["generation_done"]["model"] == MODEL and "generation_ms" in events["generation_done"]
    assert events["pipeline_done"]["cost_cents"] == 7 and events["pipeline_done"]["kind"] == "text"
    assert all(secret_subject[:41] not in str(r) for r in mine)
    assert all("XYZZY" not in str(r) for r in mine if r["level"] != "DEBUG")
    assert all(len(str(r)) < 1000 for r in mine)  # no image bytes, no full prompt


# -- paths ------------------------------------------------------------------------------------

USER = UUID("5f0c6a1e-2b7d-4c1a-9e3f-0a1b2c3d4e5f")
OTHER = UUID("11111111-2222-4333-8444-555555555555")


def test_output_paths_are_built_from_ids() -> None:
    job = UUID("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee")
    assert output_path(AssetKind.EDGE_MAP, USER, job) == ObjectPath("intermediates", f"{USER}/{job}/edge.png")
    assert output_path(AssetKind.THUMBNAIL, USER, job) == ObjectPath(
        "intermediates", f"{USER}/{job}/thumbnail.png")
    assert output_path(AssetKind.PDF, USER, job) == ObjectPath("artifacts", f"{USER}/{job}/coloring_page.pdf")
    with pytest.raises(TypeError):
        output_path(AssetKind.PDF, f"{USER}/..", job)  # type: ignore[arg-type]


@pytest.mark.parametrize(("stored_as", "kind", "expected"), [
    (f"{USER}/photo.jpg", AssetKind.ORIGINAL, ObjectPath("originals", f"{USER}/photo.jpg")),
    (f"{USER}/p.jpg", AssetKind.PREPROCESSED, ObjectPath("originals", f"{USER}/p.jpg")),
    (f"{USER}/j/edge.png", AssetKind.EDGE_MAP, ObjectPath("intermediates", f"{USER}/j/edge.png")),
    (f"{USER}/j/coloring_page.pdf", AssetKind.PDF, ObjectPath("artifacts", f"{USER}/j/coloring_page.pdf")),
])
def test_input_paths_accepted(stored_as: str, kind: AssetKind, expected: ObjectPath) -> None:
    assert input_path(stored_as, kind, USER) == expected


@pytest.mark.parametrize("stored_as", [
    None, "", 42, f"/{USER}/photo.jpg", f"originals/{OTHER}/photo.jpg", f"{OTHER}/photo.jpg",
    f"originals/{USER}", f"{USER}", f"originals/{USER}/../{OTHER}/x.jpg", f"{USER}/./x.jpg",
    f"{USER}//x.jpg", f"{USER}/%2e%2e/{OTHER}/x.jpg", f"{USER}%2F..%2F{OTHER}/x.jpg",
    f"{USER}/x\\..\\y.jpg", f"{USER}/x\n.jpg", f"{USER}/%ff.jpg", f"originals/originals/{USER}/x.jpg",
    f"originals/{USER}/a/photo.jpg", f"intermediates/{USER}/j/edge.png",  # the app never adds the bucket
])
def test_input_paths_refused(stored_as: object) -> None:
    with pytest.raises(UnsafePath):
        input_path(stored_as, AssetKind.ORIGINAL, USER)


# -- the Storage adapter's error translation --------------------------------------------------


class FailingBucket:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.uploads: list[tuple[str, dict[str, str]]] = []
        self.removes: list[list[str]] = []

    async def download(self, path: str) -> bytes:
        raise self.error

    async def upload(self, path: str, data: bytes, file_options: dict[str, str]) -> None:
        self.uploads.append((path, file_options))
        raise self.error

    async def remove(self, paths: list[str]) -> list[dict[str, Any]]:
        self.removes.append(paths)
        raise self.error


@dataclass
class FakeClient:
    bucket: FailingBucket
    buckets: list[str] = field(default_factory=list)

    @property
    def storage(self) -> FakeClient:
        return self

    def from_(self, bucket: str) -> FailingBucket:
        self.buckets.append(bucket)
        return self.bucket


@pytest.mark.parametrize(("error", "expected"), [
    (StorageApiError("Object not found", "not_found", "404"), ObjectNotFound),
    (StorageApiError("Bucket not found", "Bucket not found", "404"), ObjectNotFound),
    (StorageApiError("Injected fault", "InternalError", "503"), StorageUnavailable),
    (StorageApiError("Unable to parse", "InternalError", 502), StorageUnavailable),
    # storage-api's own temporary answers: a database time-out, an object locked by a concurrent
    # upload, a request rate to slow down (the code alone marks it, whatever the status says).
    (StorageApiError("The connection to the database timed out", "DatabaseTimeout", "544"),
     StorageUnavailable),
    (StorageApiError("The resource is locked", "ResourceLocked", "423"), StorageUnavailable),
    (StorageApiError("Please reduce your request rate", "SlowDown", "400"), StorageUnavailable),
    # Cloudflare in front of Storage: an HTML page storage3 cannot parse, with its own status.
    (StorageApiError("Unable to parse error message: <html>error code: 522</html>", "InternalError",
                     522), StorageUnavailable),
    (StorageApiError("Unable to parse error message: <html>error code: 520</html>", "InternalError",
                     520), StorageUnavailable),
    (httpx.ConnectError("refused"), StorageUnavailable),
    (httpx.ReadTimeout("slow"), StorageUnavailable),
    (StorageApiError("new row violates row-level security policy", "Unauthorized", "403"), StorageError),
    (ValueError("Object keys must not contain dot segments"), StorageError),
])
async def test_storage_adapter_translates_library_errors(error: Exception, expected: type) -> None:
    client = FakeClient(FailingBucket(error))
    storage, path = SupabaseStorage(client), ObjectPath("intermediates", f"{USER}/j/edge.png")
    for call in (storage.download(path), storage.upload(path, b"png", "image/png"),
                 storage.remove(path)):
        with pytest.raises(StorageError) as caught:
            await call
        assert type(caught.value) is expected and caught.value.__cause__ is error
    assert client.buckets == ["intermediates"] * 3
    assert client.bucket.uploads == [(f"{USER}/j/edge.png", {"content-type": "image/png", "upsert": "true"})]
    assert client.bucket.removes == [[f"{USER}/j/edge.png"]]


# -- property: random params_json through the real dispatcher ---------------------------------

PROP_USER = UUID("0b0b0b0b-0000-4000-8000-000000000001")
PHOTO_ID, PAGE_ID, CORRUPT_ID, FOREIGN_ID, MISSING_ID = (
    UUID(f"0a0a0a0a-0000-4000-8000-00000000000{i}") for i in range(1, 6))
BEHAVIOURS = ("ok", "ok", "ok", "rate_limited", "refused", "no_image", "blank", "crash")


def property_world(behaviour: str) -> World:
    error = {"rate_limited": RetryableJobError("Gemini is rate limiting us", code="rate_limited"),
             "refused": PermanentJobError("This request can't be drawn", code="content_refused"),
             "no_image": RetryableJobError("Gemini returned no image", code="no_image",
                                           max_retries=1),
             "crash": RuntimeError("a bug")}.get(behaviour)
    page = png_of((256, 256)) if behaviour == "blank" else small_page()
    world = World(user=PROP_USER, generator=FakeGenerator(page, error))
    for asset_id, data, owner in ((PHOTO_ID, PHOTO, PROP_USER), (PAGE_ID, small_page(), PROP_USER),
                                  (CORRUPT_ID, NOT_AN_IMAGE, PROP_USER), (FOREIGN_ID, PHOTO, OTHER)):
        path = ObjectPath("originals", f"{owner}/{asset_id}.img")
        world.storage.put(path, data)
        world.assets.rows[asset_id] = AssetRow(id=asset_id, user_id=owner, kind=AssetKind.ORIGINAL,
                                               storage_path=path.name)
    return world


JUNK = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                 st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(),
                                                                       max_size=2))
TEXT = st.one_of(st.text(max_size=40), st.text(min_size=1, max_size=40),
                 st.sampled_from([1999, 2000, 2001, 5000]).map(lambda n: "y" * n))
IDS = st.sampled_from([str(i) for i in (PHOTO_ID, PAGE_ID, CORRUPT_ID, FOREIGN_ID, MISSING_ID)]
                      + ["not-a-uuid", str(PHOTO_ID).upper(), ""])


def choice(*values: str) -> st.SearchStrategy[str]:
    return st.sampled_from([*values, *(v.upper() for v in values)])


KINDS = st.one_of(
    st.fixed_dictionaries({"text_prompt": TEXT}),
    st.fixed_dictionaries({"asset_id": IDS}),
    st.fixed_dictionaries({"edit_parent_id": IDS, "edit_prompt": TEXT, "edit_source_asset_id": IDS}),
)
OPTIONS = st.fixed_dictionaries({}, optional={
    "complexity": choice("simple", "standard", "detailed"),
    "line_thickness": choice("thin", "medium", "thick"),
    "paper_size": choice("A4", "Letter"), "title": TEXT, "custom_prompt": TEXT})
KNOWN_KEYS = ("text_prompt", "asset_id", "edit_parent_id", "edit_prompt", "edit_source_asset_id",
              "complexity", "line_thickness", "paper_size", "title", "custom_prompt")
CORRUPTIONS = st.one_of(st.just({}), st.dictionaries(
    st.sampled_from(KNOWN_KEYS), st.one_of(JUNK, st.sampled_from(["extreme", "A3", ""])), max_size=2))
EXTRA = st.dictionaries(st.text(max_size=8).filter(lambda k: k not in KNOWN_KEYS), JUNK, max_size=3)
PARAMS = st.builds(lambda kind, options, corrupt, extra: {**extra, **kind, **options, **corrupt},
                   KINDS, OPTIONS, CORRUPTIONS, EXTRA)


async def drain_one(params: dict[str, Any], behaviour: str) -> None:
    queue, world = InMemoryQueue(), property_world(behaviour)
    job_id = queue.add(params)
    queue.jobs[job_id].job = replace(queue.jobs[job_id].job, user_id=PROP_USER)
    dispatcher = Dispatcher(queue, world.pipeline(), DispatcherSettings(
        worker_id="prop", max_concurrent_jobs=2, lease_seconds=30, backoff=Backoff(base_seconds=60)),
        world.metrics)
    started = datetime.now(UTC)
    with anyio.fail_after(10):
        await dispatcher.drain()  # nothing may escape
    check_outcome(queue, job_id, started)


def check_outcome(queue: InMemoryQueue, job_id: UUID, started: datetime) -> None:
    item = queue.jobs[job_id]
    status = item.job.status
    event(f"{status.value}: {item.error or 'ok'}")
    assert status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.QUEUED)
    assert item.refunds == (1 if status is JobStatus.FAILED else 0)
    if status is JobStatus.QUEUED:
        assert item.run_after > started + timedelta(seconds=1) and item.job.attempts == 1
    if status is JobStatus.SUCCEEDED:
        assert [len(r.assets) for r in item.results] == [3]
    else:
        assert item.error and "Traceback" not in item.error and item.results == []


@settings(max_examples=60, deadline=None)
@given(params=PARAMS, behaviour=st.sampled_from(BEHAVIOURS))
def test_random_params_never_crash_the_worker(params: dict[str, Any], behaviour: str) -> None:
    anyio.run(drain_one, params, behaviour)
