"""GeminiGenerator against the fake Gemini over a socket: every outcome maps to the right error."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from loguru import logger
from PIL import Image

from bench.harness import free_port
from realtime_worker.errors import (
    ConfigurationJobError,
    JobError,
    PermanentJobError,
    RetryableJobError,
)
from realtime_worker.generator import GeminiGenerator, GenerationRequest, Generator
from realtime_worker_devstack.faults import Faults
from realtime_worker_devstack.gemini import GeminiFake, error_body, error_info
from tests.gemini_server import serving

if TYPE_CHECKING:
    from loguru import Record

pytestmark = [
    pytest.mark.integration,
    # google-genai subclasses aiohttp.ClientSession for every session it opens.
    pytest.mark.filterwarnings("ignore:Inheritance class Aiohttp:DeprecationWarning"),
]

KEY = "AIzaSy-test-SECRET-key-do-not-leak-42"
MODEL = "gemini-3.1-flash-image"
PHOTO = Path(__file__).resolve().parents[2] / "fixtures" / "photos" / "sample_photo.jpg"
TEXT_JOB = GenerationRequest(text="a tiger eating a burger", system_instruction="Line art only.")


@pytest.fixture
def faults() -> Faults:
    return Faults(seed=99)


@pytest.fixture
def fake(faults: Faults) -> GeminiFake:
    return GeminiFake(faults, KEY)


@pytest.fixture
async def base_url(fake: GeminiFake) -> AsyncIterator[str]:
    async with serving(fake) as url:
        yield url


@pytest.fixture
async def generator(base_url: str) -> AsyncIterator[GeminiGenerator]:
    gen = GeminiGenerator(KEY, MODEL, base_url, timeout_seconds=10)
    try:
        yield gen
    finally:
        await gen.aclose()


@pytest.fixture
def log_records() -> Iterator[list[Record]]:
    records: list[Record] = []
    sink = logger.add(lambda message: records.append(message.record), level="DEBUG")
    try:
        yield records
    finally:
        logger.remove(sink)


async def _fails(gen: Generator, request: GenerationRequest = TEXT_JOB) -> JobError:
    with pytest.raises(JobError) as caught:
        await gen.generate(request)
    _assert_no_key(caught.value)
    return caught.value


def _assert_no_key(exc: BaseException) -> None:
    seen: BaseException | None = exc
    while seen is not None:
        assert KEY not in str(seen)
        assert KEY not in repr(seen)
        assert all(KEY not in str(arg) for arg in seen.args)
        seen = seen.__cause__ or seen.__context__


def _photo() -> bytes:
    if PHOTO.exists():
        return PHOTO.read_bytes()
    out = io.BytesIO()
    Image.new("RGB", (64, 48), "teal").save(out, format="JPEG")
    return out.getvalue()


# --- success ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_text_job_returns_the_final_image(generator: GeminiGenerator, fake: GeminiFake) -> None:
    image = await generator.generate(TEXT_JOB)

    assert image.mime_type == "image/png"
    assert image.model == MODEL
    assert image.output_tokens == 1120
    assert image.input_tokens and image.input_tokens > 0
    assert image.latency_seconds > 0
    with Image.open(io.BytesIO(image.data)) as page:
        assert page.size == (864, 1184)  # the final page, not the smaller thought draft
    sent = fake.requests[-1]
    assert (sent.prompt, sent.system_instruction) == (TEXT_JOB.text, TEXT_JOB.system_instruction)
    assert (sent.image_count, sent.aspect_ratio, sent.api_version) == (0, "3:4", "v1beta")


@pytest.mark.anyio
async def test_photo_reaches_gemini(generator: GeminiGenerator, fake: GeminiFake) -> None:
    photo = _photo()
    request = GenerationRequest(
        text="Turn this photo into a coloring page.",
        system_instruction="Line art only.",
        image=photo,
        image_mime="image/jpeg",
        aspect_ratio="1:1",
    )
    image = await generator.generate(request)

    sent = fake.requests[-1]
    assert sent.image_sha256 == (hashlib.sha256(photo).hexdigest(),)
    assert sent.prompt == request.text
    with Image.open(io.BytesIO(image.data)) as page:
        assert page.size == (1024, 1024)


@pytest.mark.anyio
async def test_environment_cannot_redirect_the_client(
    base_url: str, fake: GeminiFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", "env-google-key")
    monkeypatch.setenv("GEMINI_API_KEY", "env-gemini-key")
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    monkeypatch.setenv("GOOGLE_GENAI_USE_ENTERPRISE", "true")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("GOOGLE_GENAI_API_VERSION", "v1")
    gen = GeminiGenerator(KEY, MODEL, base_url)
    try:
        await gen.generate(TEXT_JOB)
    finally:
        await gen.aclose()
    assert fake.requests[-1].api_version == "v1beta"


@pytest.mark.anyio
async def test_check_model(generator: GeminiGenerator, base_url: str) -> None:
    await generator.check_model()

    for gen, code in [
        (GeminiGenerator(KEY, "gemini-1.0-pro", base_url), "model_not_found"),
        (GeminiGenerator("wrong-key", MODEL, base_url), "gemini_auth"),
    ]:
        try:
            with pytest.raises(ConfigurationJobError) as caught:
                await gen.check_model()
        finally:
            await gen.aclose()
        assert caught.value.code == code


# --- retryable --------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("delay", [7.0, 45.8])
async def test_rate_limit_honours_retry_delay(
    generator: GeminiGenerator, faults: Faults, delay: float
) -> None:
    faults.update({"gemini_429_fraction": 1.0, "gemini_retry_delay_seconds": delay})
    error = await _fails(generator)
    assert isinstance(error, RetryableJobError)
    assert (error.code, error.retry_after) == ("rate_limited", delay)
    assert str(error) == "Gemini is rate limiting us"


@pytest.mark.anyio
async def test_daily_quota_waits_at_least_an_hour(generator: GeminiGenerator, faults: Faults) -> None:
    faults.update({"gemini_429_fraction": 1.0, "gemini_429_per_day": True})
    error = await _fails(generator)
    assert isinstance(error, RetryableJobError)
    assert error.code == "daily_quota"
    assert error.retry_after is not None and error.retry_after >= 3600


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("settings", "code"),
    [
        ({"gemini_500_fraction": 1.0}, "gemini_unavailable"),
        ({"gemini_503_fraction": 1.0}, "gemini_unavailable"),
        ({"gemini_status": 502}, "gemini_unavailable"),
        ({"gemini_status": 504}, "gemini_timeout"),
        ({"gemini_status": 408}, "gemini_timeout"),
    ],
)
async def test_server_errors_are_retryable(
    generator: GeminiGenerator, faults: Faults, settings: dict[str, Any], code: str
) -> None:
    faults.update(settings)
    error = await _fails(generator)
    assert isinstance(error, RetryableJobError)
    assert error.code == code


@pytest.mark.anyio
@pytest.mark.parametrize("reason", ["STOP", "NO_IMAGE", "IMAGE_OTHER", "OTHER", "MALFORMED_RESPONSE"])
async def test_no_image_is_retried_once(generator: GeminiGenerator, faults: Faults, reason: str) -> None:
    faults.update({"gemini_no_image_fraction": 1.0, "gemini_no_image_finish_reason": reason})
    error = await _fails(generator)
    assert isinstance(error, RetryableJobError)
    assert (error.code, error.max_retries) == ("no_image", 1)


@pytest.mark.anyio
async def test_timeout_is_retryable_and_quick(base_url: str, faults: Faults) -> None:
    faults.update({"gemini_slow_fraction": 1.0, "gemini_slow_seconds": 30.0})
    gen = GeminiGenerator(KEY, MODEL, base_url, timeout_seconds=0.5)
    started = time.monotonic()
    try:
        error = await _fails(gen)
    finally:
        await gen.aclose()
    assert isinstance(error, RetryableJobError)
    assert error.code == "gemini_timeout"
    assert time.monotonic() - started < 2


@pytest.mark.anyio
async def test_connection_refused_is_retryable_without_a_hidden_retry() -> None:
    gen = GeminiGenerator(KEY, MODEL, f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    try:
        error = await _fails(gen)
    finally:
        await gen.aclose()
    assert isinstance(error, RetryableJobError)
    assert error.code == "gemini_unavailable"
    # Without retry_options the SDK sleeps 1-10 s and connects again; attempts=1 must not.
    assert time.monotonic() - started < 1


# --- permanent --------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "reason",
    [
        "SAFETY",
        "IMAGE_SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_RECITATION",
    ],
)
async def test_refused_content_is_permanent(generator: GeminiGenerator, faults: Faults, reason: str) -> None:
    faults.update({"gemini_safety_fraction": 1.0, "gemini_safety_finish_reason": reason})
    error = await _fails(generator)
    assert type(error) is PermanentJobError
    assert (error.code, str(error)) == ("content_refused", "This request can't be drawn")


@pytest.mark.anyio
@pytest.mark.parametrize("reason", ["PROHIBITED_CONTENT", "SAFETY", "OTHER"])
async def test_blocked_prompt_is_permanent(generator: GeminiGenerator, faults: Faults, reason: str) -> None:
    faults.update({"gemini_prompt_block_fraction": 1.0, "gemini_block_reason": reason})
    error = await _fails(generator)
    assert type(error) is PermanentJobError
    assert error.code == "content_refused"


@pytest.mark.anyio
async def test_bad_request_is_permanent(generator: GeminiGenerator) -> None:
    request = GenerationRequest(text="x", system_instruction="y", aspect_ratio="7:3")
    error = await _fails(generator, request)
    assert type(error) is PermanentJobError
    assert error.code == "gemini_bad_request"
    assert str(error) == "The image service refused the request"


@pytest.mark.anyio
async def test_unknown_model_is_a_configuration_error(base_url: str) -> None:
    gen = GeminiGenerator(KEY, "gemini-1.0-pro", base_url)
    try:
        error = await _fails(gen)
    finally:
        await gen.aclose()
    assert isinstance(error, ConfigurationJobError)
    assert isinstance(error, PermanentJobError)
    assert error.code == "model_not_found"


@pytest.mark.anyio
async def test_wrong_key_is_a_configuration_error_logged_without_secrets(
    base_url: str, log_records: list[Record]
) -> None:
    gen = GeminiGenerator(KEY + "-wrong", MODEL, base_url)
    try:
        error = await _fails(gen)
    finally:
        await gen.aclose()
    assert isinstance(error, ConfigurationJobError)
    assert error.code == "gemini_auth"
    alerts = [r for r in log_records if r["extra"].get("event") == "gemini_config_error"]
    assert alerts and alerts[0]["level"].name == "ERROR"
    for record in log_records:
        text = f"{record['message']} {record['extra']}"
        assert KEY not in text
        assert TEXT_JOB.text not in text


@pytest.mark.anyio
@pytest.mark.parametrize("status", [401, 403])
async def test_auth_statuses_are_configuration_errors(
    generator: GeminiGenerator, faults: Faults, status: int
) -> None:
    faults.update({"gemini_status": status})
    error = await _fails(generator)
    assert isinstance(error, ConfigurationJobError)
    assert error.code == "gemini_auth"


@pytest.mark.anyio
@pytest.mark.parametrize("error", [
    error_body(400, "User location is not supported for the API use.", status="FAILED_PRECONDITION"),
    error_body(400, "API key expired. Please renew the API key.", [error_info("API_KEY_INVALID")]),
])
async def test_billing_region_and_key_400s_are_configuration_errors(error: dict[str, Any]) -> None:
    """What the devstack's fake does not send: Google's 400s that blame the worker's setup.
    They pause the worker's claiming (dispatcher), so the mapping must hold over the real SDK."""
    async def refuse(_: web.Request) -> web.Response:
        return web.json_response(error, status=400)

    app = web.Application()
    app.router.add_post("/{version}/models/{model_action}", refuse)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    gen = GeminiGenerator(KEY, MODEL, str(server.make_url("/")), timeout_seconds=10)
    try:
        failure = await _fails(gen)
    finally:
        await gen.aclose()
        await server.close()
    assert isinstance(failure, ConfigurationJobError)
    assert failure.code == "gemini_auth"
