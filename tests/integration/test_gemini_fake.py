"""The fake Gemini speaks the real wire format: the unmodified google-genai client over a socket."""

from __future__ import annotations

import base64
import hashlib
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest
from google import genai
from google.genai import errors, types
from PIL import Image

from realtime_worker.errors import QuotaJobError
from realtime_worker.generator import GeminiGenerator, GenerationRequest
from realtime_worker_devstack import photos
from realtime_worker_devstack.faults import Faults
from realtime_worker_devstack.gemini import GeminiFake, draw_line_art
from tests.edges import share_on_edges
from tests.gemini_server import serving

pytestmark = [
    pytest.mark.integration,
    # google-genai subclasses aiohttp.ClientSession for every session it opens.
    pytest.mark.filterwarnings("ignore:Inheritance class Aiohttp:DeprecationWarning"),
]

KEY = "fake-gemini-key-0123456789"
MODEL = "gemini-3.1-flash-image"


@pytest.fixture
def faults() -> Faults:
    return Faults(seed=1234)


@pytest.fixture
def fake(faults: Faults) -> GeminiFake:
    return GeminiFake(faults, KEY)


@pytest.fixture
async def base_url(fake: GeminiFake) -> AsyncIterator[str]:
    async with serving(fake) as url:
        yield url


def _client(base_url: str, key: str = KEY, timeout_ms: int = 10_000) -> genai.Client:
    options = types.HttpOptions(
        base_url=base_url,
        api_version="v1beta",
        timeout=timeout_ms,
        retry_options=types.HttpRetryOptions(attempts=1),
    )
    return genai.Client(api_key=key, vertexai=False, http_options=options)


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[genai.Client]:
    client = _client(base_url)
    try:
        yield client
    finally:
        await client.aio.aclose()
        client.close()


def _config(aspect_ratio: str = "3:4") -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        response_modalities=["IMAGE"],
        candidate_count=1,
        image_config=types.ImageConfig(aspect_ratio=aspect_ratio),
        system_instruction="Printable black-and-white coloring page.",
    )


async def _generate(
    client: genai.Client, contents: Any = "a fox in a forest", model: str = MODEL, ratio: str = "3:4"
) -> types.GenerateContentResponse:
    return await client.aio.models.generate_content(model=model, contents=contents, config=_config(ratio))


def _images(response: types.GenerateContentResponse) -> list[types.Blob]:
    assert response.candidates
    content = response.candidates[0].content
    assert content is not None
    return [p.inline_data for p in content.parts or [] if p.inline_data and not p.thought]


def _png(size: tuple[int, int] = (40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "orange").save(out, format="PNG")
    return out.getvalue()


# --- the happy path ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_image_is_black_line_art_at_the_requested_ratio(client: genai.Client) -> None:
    response = await _generate(client)

    blob = _images(response)[-1]
    assert blob.mime_type == "image/png"
    assert blob.data
    with Image.open(io.BytesIO(blob.data)) as image:
        assert image.size == (864, 1184)
        colours = image.convert("L").getcolors()
    assert colours is not None
    assert {colour for _, colour in colours} == {0, 255}
    assert response.candidates and response.candidates[0].finish_reason == types.FinishReason.STOP
    assert response.model_version == MODEL
    assert response.response_id
    usage = response.usage_metadata
    assert usage and usage.candidates_token_count == 1120
    assert usage.total_token_count == (usage.prompt_token_count or 0) + 1120


@pytest.mark.anyio
async def test_square_images_and_the_v1_route(base_url: str) -> None:
    options = types.HttpOptions(base_url=base_url, api_version="v1")
    client = genai.Client(api_key=KEY, vertexai=False, http_options=options)
    try:
        response = await _generate(client, ratio="1:1")
    finally:
        await client.aio.aclose()
        client.close()
    with Image.open(io.BytesIO(_images(response)[-1].data or b"")) as image:
        assert image.size == (1024, 1024)


@pytest.mark.anyio
async def test_the_last_non_thought_image_is_the_final_page(client: genai.Client) -> None:
    response = await _generate(client)

    assert response.candidates and response.candidates[0].content
    parts = response.candidates[0].content.parts or []
    assert parts[0].text
    thoughts = [p for p in parts if p.inline_data and p.thought]
    assert thoughts, "the fake should send an interim thought image"
    assert parts.index(thoughts[-1]) < parts.index(parts[-1])
    with Image.open(io.BytesIO(thoughts[0].inline_data.data or b"")) as draft:  # type: ignore[union-attr]
        assert draft.size != (864, 1184)
    with Image.open(io.BytesIO(_images(response)[-1].data or b"")) as final:
        assert final.size == (864, 1184)


@pytest.mark.anyio
async def test_the_drawing_follows_the_prompt(client: genai.Client) -> None:
    fox = _images(await _generate(client, "a fox"))[-1].data
    again = _images(await _generate(client, "a fox"))[-1].data
    owl = _images(await _generate(client, "an owl"))[-1].data
    assert fox == again
    assert fox != owl


async def test_a_sent_image_comes_back_as_its_outlines(client: genai.Client) -> None:
    """Photo and edit jobs: the page is the edges of the image sent, so two images give two
    pages, each lying on its own image's outlines and not on the other's."""
    scenes = [photos.scene((600, 600), shade) for shade in (0, 4)]
    pages = []
    for scene in scenes:
        part = types.Part.from_bytes(data=photos.jpeg(scene), mime_type="image/jpeg")
        response = await _generate(client, [part, "turn this photo into a coloring page"],
                                   ratio="1:1")
        pages.append(_images(response)[-1].data or b"")
    own = [share_on_edges(page, scene) for page, scene in zip(pages, scenes, strict=True)]
    crossed = [share_on_edges(page, scene) for page, scene in zip(pages, scenes[::-1], strict=True)]
    assert pages[0] != pages[1]
    assert min(own) > 0.8, own
    assert all(o - c > 0.25 for o, c in zip(own, crossed, strict=True)), (own, crossed)


def test_drawing_is_fast() -> None:
    timings = []
    for seed in range(10):
        started = time.perf_counter()
        draw_line_art(seed, 864, 1184)
        timings.append(time.perf_counter() - started)
    assert sorted(timings)[len(timings) // 2] < 0.03


@pytest.mark.anyio
async def test_request_log_records_what_was_sent(client: genai.Client, fake: GeminiFake) -> None:
    photo = _png()
    await _generate(client, [types.Part.from_bytes(data=photo, mime_type="image/png"), "edit it"])

    sent = fake.requests[-1]
    assert sent.model == MODEL
    assert sent.api_version == "v1beta"
    assert sent.prompt == "edit it"
    assert sent.system_instruction == "Printable black-and-white coloring page."
    assert sent.image_count == 1
    assert sent.image_sha256 == (hashlib.sha256(photo).hexdigest(),)
    assert sent.aspect_ratio == "3:4"


@pytest.mark.anyio
async def test_model_resource(client: genai.Client) -> None:
    model = await client.aio.models.get(model=MODEL)
    assert model.name == f"models/{MODEL}"
    assert model.supported_actions and "generateContent" in model.supported_actions

    with pytest.raises(errors.ClientError) as caught:
        await client.aio.models.get(model="gemini-2.0-flash")
    assert caught.value.code == 404
    assert caught.value.status == "NOT_FOUND"


# --- errors and faults ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_rate_limit_carries_a_retry_delay(client: genai.Client, faults: Faults) -> None:
    faults.update({"gemini_429_fraction": 1.0, "gemini_retry_delay_seconds": 45.8})

    with pytest.raises(errors.ClientError) as caught:
        await _generate(client)

    error = caught.value
    assert error.code == 429
    assert error.status == "RESOURCE_EXHAUSTED"
    details = {d["@type"].rsplit(".", 1)[-1]: d for d in error.details["error"]["details"]}
    assert details["RetryInfo"]["retryDelay"] == "45.8s"
    assert "PerMinute" in details["QuotaFailure"]["violations"][0]["quotaId"]
    assert details["Help"]["links"]


def _quota_details(error: errors.APIError) -> dict[str, Any]:
    assert (error.code, error.status) == (429, "RESOURCE_EXHAUSTED")
    return {d["@type"].rsplit(".", 1)[-1]: d for d in error.details["error"]["details"]}


@pytest.mark.anyio
async def test_the_quota_per_minute_refuses_at_once_until_the_window_has_room(
        client: genai.Client, faults: Faults, fake: GeminiFake) -> None:
    faults.update({"gemini_quota_per_minute": 2})
    await _generate(client)
    await _generate(client)
    started = time.monotonic()
    with pytest.raises(errors.ClientError) as caught:
        await _generate(client)
    assert time.monotonic() - started < 1  # refused at once, not after the generation time
    details = _quota_details(caught.value)
    [violation] = details["QuotaFailure"]["violations"]
    assert violation["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel"
    assert violation["quotaDimensions"]["model"] == MODEL
    delay = details["RetryInfo"]["retryDelay"]
    assert delay.endswith("s") and 58 < float(delay[:-1]) <= 60  # when the first leaves the window
    assert f"Please retry in {delay}." in (caught.value.message or "")
    assert (fake.quota.requests, fake.quota.refused) == (3, 1)


@pytest.mark.anyio
async def test_the_concurrent_quota_refuses_a_request_beyond_it(
        base_url: str, faults: Faults, fake: GeminiFake) -> None:
    faults.update({"gemini_quota_concurrent": 1, "gemini_latency_seconds": 1.0})
    first, second = _client(base_url), _client(base_url)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_generate, first)
            await anyio.sleep(0.3)
            with pytest.raises(errors.ClientError) as caught:
                await _generate(second)
        details = _quota_details(caught.value)
        assert "Concurrent" in details["QuotaFailure"]["violations"][0]["quotaId"]
        assert details["RetryInfo"]["retryDelay"] == "1s"
        await _generate(second)  # the first has ended: room again
    finally:
        for c in (first, second):
            await c.aio.aclose()
            c.close()
    assert fake.quota.peak_in_flight == 1


@pytest.mark.anyio
async def test_the_worker_reads_the_quotas_refusal_as_a_deferral(base_url: str, faults: Faults) -> None:
    faults.update({"gemini_quota_per_minute": 1})
    generator = GeminiGenerator(KEY, MODEL, base_url)
    request = GenerationRequest(text="a fox", system_instruction="line art")
    try:
        await generator.generate(request)
        with pytest.raises(QuotaJobError) as caught:
            await generator.generate(request)
    finally:
        await generator.aclose()
    assert caught.value.code == "rate_limited"
    assert caught.value.retry_after is not None and 58 < caught.value.retry_after <= 60


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("knob", "code", "status"),
    [
        ("gemini_503_fraction", 503, "UNAVAILABLE"),
        ("gemini_500_fraction", 500, "INTERNAL"),
    ],
)
async def test_server_errors(client: genai.Client, faults: Faults, knob: str, code: int, status: str) -> None:
    faults.update({knob: 1.0})
    with pytest.raises(errors.ServerError) as caught:
        await _generate(client)
    assert (caught.value.code, caught.value.status) == (code, status)
    if code == 503:
        assert "overloaded" in (caught.value.message or "")


@pytest.mark.anyio
async def test_safety_refusal_is_a_finish_reason(client: genai.Client, faults: Faults) -> None:
    faults.update({"gemini_safety_fraction": 1.0})
    response = await _generate(client)
    assert response.candidates
    assert response.candidates[0].finish_reason == types.FinishReason.IMAGE_SAFETY
    assert _images(response) == []
    assert response.text


@pytest.mark.anyio
async def test_prompt_block_has_no_candidates(client: genai.Client, faults: Faults) -> None:
    faults.update({"gemini_prompt_block_fraction": 1.0})
    response = await _generate(client)
    assert not response.candidates
    assert response.prompt_feedback
    assert response.prompt_feedback.block_reason == types.BlockedReason.PROHIBITED_CONTENT


@pytest.mark.anyio
async def test_no_image_is_stop_with_text(client: genai.Client, faults: Faults) -> None:
    faults.update({"gemini_no_image_fraction": 1.0})
    response = await _generate(client)
    assert response.candidates
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    assert _images(response) == []


@pytest.mark.anyio
async def test_wrong_key_is_refused(base_url: str) -> None:
    client = _client(base_url, key="not-the-key")
    try:
        with pytest.raises(errors.ClientError) as caught:
            await _generate(client)
    finally:
        await client.aio.aclose()
        client.close()
    assert (caught.value.code, caught.value.status) == (400, "INVALID_ARGUMENT")
    reasons = [d.get("reason") for d in caught.value.details["error"]["details"]]
    assert "API_KEY_INVALID" in reasons


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("code", "status"),
    [
        (401, "UNAUTHENTICATED"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND"),
        (400, "INVALID_ARGUMENT"),
    ],
)
async def test_forced_status(client: genai.Client, faults: Faults, code: int, status: str) -> None:
    faults.update({"gemini_status": code})
    with pytest.raises(errors.ClientError) as caught:
        await _generate(client)
    assert (caught.value.code, caught.value.status) == (code, status)


@pytest.mark.anyio
async def test_unknown_model_is_not_found(client: genai.Client, fake: GeminiFake) -> None:
    with pytest.raises(errors.ClientError) as caught:
        await _generate(client, model="gemini-2.0-flash")
    assert (caught.value.code, caught.value.status) == (404, "NOT_FOUND")
    assert "gemini-2.0-flash" in (caught.value.message or "")
    assert not fake.requests


@pytest.mark.anyio
async def test_slow_answer_times_out_the_client(base_url: str, faults: Faults) -> None:
    faults.update({"gemini_slow_fraction": 1.0, "gemini_slow_seconds": 30.0})
    client = _client(base_url, timeout_ms=300)
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            await _generate(client)
    finally:
        await client.aio.aclose()
        client.close()
    assert time.monotonic() - started < 2


@pytest.mark.anyio
async def test_latency_is_added_to_each_call(client: genai.Client, faults: Faults) -> None:
    faults.update({"gemini_latency_seconds": 0.2})
    started = time.monotonic()
    await _generate(client)
    assert time.monotonic() - started >= 0.2


@pytest.mark.anyio
async def test_fault_sequence_repeats_with_the_seed(client: genai.Client, faults: Faults) -> None:
    async def outcomes() -> list[str]:
        seen = []
        for _ in range(8):
            try:
                await _generate(client)
                seen.append("ok")
            except errors.APIError as exc:
                seen.append(str(exc.code))
        return seen

    faults.update({"seed": 7, "gemini_503_fraction": 0.5})
    first = await outcomes()
    faults.update({"seed": 7})
    assert await outcomes() == first
    assert set(first) == {"ok", "503"}


# --- the raw wire format ----------------------------------------------------------------------


async def _post(base_url: str, body: Any, key: str | None = KEY) -> tuple[int, str, Any]:
    headers = {"x-goog-api-key": key} if key else {}
    url = f"{base_url.rstrip('/')}/v1beta/models/{MODEL}:generateContent"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as response,
    ):
        return response.status, response.content_type, await response.json()


def _body(data: str, mime_key: str, blob_key: str = "inlineData") -> dict[str, Any]:
    parts = [{blob_key: {"data": data, mime_key: "image/png"}}, {"text": "colour me"}]
    return {
        "contents": [{"role": "user", "parts": parts}],
        "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": "1:1"}},
    }


def _png_with_url_unsafe_base64() -> bytes:
    for width in range(1, 200):
        data = _png((width, 7))
        if {"+", "/"} & set(base64.b64encode(data).decode()):
            return data
    raise AssertionError("no sample with + or / in its base64")


@pytest.mark.anyio
@pytest.mark.parametrize("mime_key", ["mimeType", "mime_type"])
@pytest.mark.parametrize("alphabet", ["standard", "urlsafe"])
async def test_both_base64_alphabets_and_mime_spellings(
    base_url: str, fake: GeminiFake, mime_key: str, alphabet: str
) -> None:
    image = _png_with_url_unsafe_base64()
    encode = base64.urlsafe_b64encode if alphabet == "urlsafe" else base64.b64encode
    status, content_type, body = await _post(base_url, _body(encode(image).decode(), mime_key))
    assert (status, content_type) == (200, "application/json")
    assert body["candidates"][0]["finishReason"] == "STOP"
    assert fake.requests[-1].image_sha256 == (hashlib.sha256(image).hexdigest(),)


@pytest.mark.anyio
async def test_snake_case_inline_data_is_accepted(base_url: str, fake: GeminiFake) -> None:
    image = _png()
    body = _body(base64.b64encode(image).decode(), "mime_type", blob_key="inline_data")
    status, _, _ = await _post(base_url, body)
    assert status == 200
    assert fake.requests[-1].image_count == 1


@pytest.mark.anyio
@pytest.mark.parametrize("data", ["!!!not base64!!!", base64.b64encode(b"plain text").decode()])
async def test_bad_inline_data_is_invalid_argument(base_url: str, data: str) -> None:
    status, content_type, body = await _post(base_url, _body(data, "mimeType"))
    assert (status, content_type) == (400, "application/json")
    assert body["error"]["status"] == "INVALID_ARGUMENT"
    assert set(body["error"]) >= {"code", "message", "status"}


@pytest.mark.anyio
async def test_missing_key_is_refused(base_url: str) -> None:
    status, content_type, body = await _post(base_url, _body("", "mimeType"), key=None)
    assert (status, content_type) == (403, "application/json")
    assert body["error"]["status"] == "PERMISSION_DENIED"
