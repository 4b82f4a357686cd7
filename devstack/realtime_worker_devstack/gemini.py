"""A local fake of the Gemini Developer API (``generateContent`` for image models).

It speaks the real wire format, so the unmodified ``google-genai`` client talks to it: the
``x-goog-api-key`` header, the request body as the SDK writes it (camelCase config keys,
snake_case nested keys, URL-safe base64), Google's JSON error shape and status names, and a
200 answer whose last non-thought part is a drawn black-and-white PNG. A request with an
image (a photo or edit job) gets that image's edges as black lines on white, so whoever looks
at the page sees which input reached the model; a text-only request gets shapes drawn from
a seed of its prompt. ``Faults`` decides,
with its seeded random source, when a call is rate limited, fails, is refused or is slow.

The component binds nothing: the devstack server mounts ``routes()`` (or ``add_routes(app)``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import math
import random
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from aiohttp import web
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps

from realtime_worker_devstack.faults import Faults
from realtime_worker_devstack.quota import QuotaLedger

VERSIONS = ("v1beta", "v1")
GENERATE = "generateContent"
# Output sizes of a "1K" image per aspect ratio, as the image models answer them.
SIZES_1K: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
    "1:4": (512, 2048),
    "4:1": (2048, 512),
    "1:8": (384, 3072),
    "8:1": (3072, 384),
}
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
TROUBLESHOOTING = "https://developers.generativeai.google/guide/troubleshooting"
RATE_LIMITS = "https://ai.google.dev/gemini-api/docs/rate-limits"
MESSAGES = {
    400: "Request contains an invalid argument.",
    401: "Request had invalid authentication credentials. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential.",
    403: "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API.",
    404: "Requested entity was not found.",
    500: f"An internal error has occurred. Please retry or report in {TROUBLESHOOTING}",
    503: "The model is overloaded. Please try again later.",
    504: "The request timed out. Please try again.",
}
# An edge (Pillow's FIND_EDGES, 0..255) becomes a line when it is at least a quarter as strong
# as the strongest edges of the image (its 99.5th percentile), and never below EDGE_FLOOR, so
# soft photos get their outlines and a flat image gets no noise.
EDGE_FLOOR = 12
EDGE_SHARE, EDGE_TOP = 1 / 4, 0.995
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
SERVICE = "generativelanguage.googleapis.com"


@dataclass(frozen=True)
class RecordedRequest:
    """What one ``generateContent`` call asked for (no image bytes, only their hashes)."""

    model: str
    api_version: str
    prompt: str
    system_instruction: str
    image_count: int
    image_sha256: tuple[str, ...]
    aspect_ratio: str | None
    image_size: str | None
    at: float


@dataclass(frozen=True)
class _Parsed:
    prompt: str
    system_instruction: str
    images: tuple[bytes, ...]
    aspect_ratio: str | None
    image_size: str | None


def error_body(code: int, message: str, details: list[dict[str, Any]] | None = None,
               status: str | None = None) -> dict[str, Any]:
    """An error answer in Google's shape (``google.rpc.Status`` as JSON); ``status`` defaults to
    the canonical name of ``code``. The one builder of Gemini error bodies, for the fake and
    for tests that serve an answer the fake does not send."""
    error: dict[str, Any] = {"code": code, "message": message,
                             "status": status or STATUS_NAMES.get(code, "UNKNOWN")}
    if details:
        error["details"] = details
    return {"error": error}


def error_info(reason: str) -> dict[str, Any]:
    """A ``google.rpc.ErrorInfo`` detail as Google sends it for an API key problem."""
    return {"@type": ERROR_INFO, "reason": reason, "domain": "googleapis.com",
            "metadata": {"service": SERVICE}}


class _ApiError(Exception):
    """An answer in Google's error shape; raised inside a handler, turned into JSON by it."""

    def __init__(self, code: int, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or []

    def response(self) -> web.Response:
        return web.json_response(error_body(self.code, self.message, self.details), status=self.code)


class _ClientGone(Exception):
    """The caller hung up while we were sleeping (its time-out fired)."""


class GeminiFake:
    """The Gemini endpoints of the devstack; ``requests`` records the latest calls."""

    def __init__(self, faults: Faults, api_key: str, *, history: int = 200) -> None:
        self.faults = faults
        self._api_key = api_key
        self.requests: deque[RecordedRequest] = deque(maxlen=history)
        self.quota = QuotaLedger()
        self._closing = False

    def routes(self) -> list[web.RouteDef]:
        routes: list[web.RouteDef] = []
        for version in VERSIONS:
            routes.append(web.post(f"/{version}/models/{{model_action}}", self.generate))
            routes.append(web.get(f"/{version}/models/{{model}}", self.get_model))
        return routes

    def add_routes(self, app: web.Application) -> None:
        """Mount the routes and stop slow answers early when the server shuts down."""
        app.add_routes(self.routes())
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, _app: web.Application) -> None:
        self._closing = True

    # --- handlers -------------------------------------------------------------------------

    async def generate(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._generate(request)
        except _ApiError as err:
            return err.response()
        except _ClientGone:
            return web.Response(status=499)

    async def get_model(self, request: web.Request) -> web.StreamResponse:
        try:
            await self._sleep(request, self.faults.gemini_latency_seconds)
            self._check_access(request)
            model = request.match_info["model"]
            if not _known_model(model):
                version = _version(request)
                message = f"Model is not found: models/{model} for api version {version}"
                raise _ApiError(404, message)
            return web.json_response(_model_resource(model))
        except _ApiError as err:
            return err.response()
        except _ClientGone:
            return web.Response(status=499)

    async def _generate(self, request: web.Request) -> web.Response:
        self._check_access(request)
        model, _, method = request.match_info["model_action"].partition(":")
        if method != GENERATE:
            raise _ApiError(404, f"Method '{method}' is not supported by this fake.")
        self._check_model(model, _version(request))
        key = request.headers["x-goog-api-key"]
        refusal = self.quota.admit(key, self.faults.gemini_quota_per_minute,
                                   self.faults.gemini_quota_concurrent)
        if refusal is not None:  # refused at once, as the real API does
            raise _quota_error(model, refusal.retry_delay_seconds, refusal.quota_id)
        try:
            await self._sleep(request, self.faults.gemini_latency_seconds)
            return await self._generated(request, model)
        finally:
            self.quota.done(key)

    async def _generated(self, request: web.Request, model: str) -> web.Response:
        parsed = _parse_body(await _read_json(request))
        self._record(model, _version(request), parsed)
        return await self._answer(request, model, parsed)

    # --- checks -----------------------------------------------------------------------------

    def _check_access(self, request: web.Request) -> None:
        forced = self.faults.gemini_status
        if forced is not None and forced != 200:
            raise _forced_error(forced, self.faults)
        key = request.headers.get("x-goog-api-key")
        if not key:
            raise _ApiError(403, MESSAGES[403])
        if not secrets.compare_digest(key.encode(), self._api_key.encode()):
            raise _bad_key()

    @staticmethod
    def _check_model(model: str, version: str) -> None:
        if not _known_model(model):
            raise _ApiError(
                404,
                f"models/{model} is not found for API version {version}, or is not supported "
                f"for {GENERATE}. Call ListModels to see the list of available models and their "
                "supported methods.",
            )

    def _record(self, model: str, version: str, parsed: _Parsed) -> None:
        hashes = tuple(hashlib.sha256(image).hexdigest() for image in parsed.images)
        self.requests.append(
            RecordedRequest(
                model=model,
                api_version=version,
                prompt=parsed.prompt,
                system_instruction=parsed.system_instruction,
                image_count=len(parsed.images),
                image_sha256=hashes,
                aspect_ratio=parsed.aspect_ratio,
                image_size=parsed.image_size,
                at=time.time(),
            )
        )

    # --- outcomes ---------------------------------------------------------------------------

    async def _answer(self, request: web.Request, model: str, parsed: _Parsed) -> web.Response:
        faults = self.faults
        if faults.chance(faults.gemini_429_fraction):
            raise _fault_quota_error(faults, model)
        if faults.chance(faults.gemini_500_fraction):
            raise _ApiError(500, MESSAGES[500])
        if faults.chance(faults.gemini_503_fraction):
            raise _ApiError(503, MESSAGES[503])
        if faults.chance(faults.gemini_slow_fraction):
            await self._sleep(request, faults.gemini_slow_seconds)
        if faults.chance(faults.gemini_hang_fraction):
            await self._sleep(request, HANG_SECONDS)
        body = self._refusal(model, parsed)
        if body is None:  # drawing takes milliseconds of CPU: keep it off the event loop
            body = await anyio.to_thread.run_sync(_image_answer, model, parsed)
        return web.json_response(body)

    def _refusal(self, model: str, parsed: _Parsed) -> dict[str, Any] | None:
        """A faulty answer drawn from the seeded source, or None for a drawn page."""
        faults = self.faults
        usage = _usage(model, parsed, with_image=False)
        if faults.chance(faults.gemini_prompt_block_fraction):
            feedback = {"blockReason": faults.gemini_block_reason}
            return _envelope(model, {"promptFeedback": feedback, "usageMetadata": usage})
        if faults.chance(faults.gemini_safety_fraction):
            refusal = "I can't create that image. Please try a different request."
            return _text_only(model, usage, refusal, faults.gemini_safety_finish_reason)
        if faults.chance(faults.gemini_no_image_fraction):
            text = "Here is a description of the page instead of an image."
            return _text_only(model, usage, text, faults.gemini_no_image_finish_reason)
        return None

    async def _sleep(self, request: web.Request, seconds: float) -> None:
        """Sleep, but stop early when the caller hangs up or the server shuts down."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            if self._closing or request.transport is None or request.transport.is_closing():
                raise _ClientGone
            await asyncio.sleep(min(left, 0.05))


# --- request parsing ------------------------------------------------------------------------


def _version(request: web.Request) -> str:
    return request.path.split("/")[1]


def _known_model(model: str) -> bool:
    return model.startswith("gemini-") and "image" in model


async def _read_json(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _ApiError(400, f"Invalid JSON payload received. {exc}") from exc
    if not isinstance(body, dict):
        raise _ApiError(400, "Invalid JSON payload received. Expected an object.")
    return body


def _parse_body(body: dict[str, Any]) -> _Parsed:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _ApiError(400, "* GenerateContentRequest.contents: contents is not specified\n")
    texts: list[str] = []
    images: list[bytes] = []
    for c_index, content in enumerate(contents):
        for p_index, part in enumerate(_parts(content)):
            _read_part(part, f"contents[{c_index}].parts[{p_index}]", texts, images)
    system = _get(body, "systemInstruction", "system_instruction") or {}
    system_texts = [str(p.get("text", "")) for p in _parts(system) if "text" in p]
    image_config = _image_config(body)
    return _Parsed(
        prompt="\n".join(texts),
        system_instruction="\n".join(system_texts),
        images=tuple(images),
        aspect_ratio=_get(image_config, "aspectRatio", "aspect_ratio"),
        image_size=_get(image_config, "imageSize", "image_size"),
    )


def _parts(content: Any) -> list[dict[str, Any]]:
    if not isinstance(content, dict):
        raise _ApiError(400, "Invalid value at 'contents': expected a Content object.")
    parts = content.get("parts") or []
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise _ApiError(400, "Invalid value at 'contents.parts': expected a list of Parts.")
    return parts


def _read_part(part: dict[str, Any], where: str, texts: list[str], images: list[bytes]) -> None:
    if "text" in part:
        texts.append(str(part["text"]))
    blob = _get(part, "inlineData", "inline_data")
    if isinstance(blob, dict):
        images.append(_decode_image(blob, f"{where}.inline_data"))


def _decode_image(blob: dict[str, Any], where: str) -> bytes:
    mime = _get(blob, "mimeType", "mime_type")
    if not mime:
        raise _ApiError(400, f"* GenerateContentRequest.{where}.mime_type: required field\n")
    data = _b64decode(str(blob.get("data", "")), where)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception as exc:  # Pillow raises many kinds for garbage input
        raise _ApiError(
            400, f"Unable to process input image. Please retry or report in {TROUBLESHOOTING}"
        ) from exc
    return data


def _b64decode(text: str, where: str) -> bytes:
    """Decode either base64 alphabet (the SDK sends the URL-safe one), padded or not."""
    standard = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _ApiError(
            400,
            f"Invalid value at '{where}.data' (TYPE_BYTES), Base64 decoding failed",
            [_field_violation(f"{where}.data", "Base64 decoding failed")],
        ) from exc


def _image_config(body: dict[str, Any]) -> dict[str, Any]:
    generation = _get(body, "generationConfig", "generation_config") or {}
    config = _get(generation, "imageConfig", "image_config") or {}
    ratio = _get(config, "aspectRatio", "aspect_ratio")
    if ratio is not None and ratio not in SIZES_1K:
        raise _ApiError(400, f"Unsupported aspect ratio: {ratio}.")
    return dict(config)


def _get(mapping: Any, *names: str) -> Any:
    if not isinstance(mapping, dict):
        return None
    return next((mapping[name] for name in names if name in mapping), None)


# --- answers --------------------------------------------------------------------------------


def _envelope(model: str, body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "modelVersion": model, "responseId": secrets.token_urlsafe(16)}


def _text_only(model: str, usage: dict[str, Any], text: str, reason: str) -> dict[str, Any]:
    content = {"role": "model", "parts": [{"text": text}]}
    candidate = {"index": 0, "content": content, "finishReason": reason}
    return _envelope(model, {"candidates": [candidate], "usageMetadata": usage})


def _image_answer(model: str, parsed: _Parsed) -> dict[str, Any]:
    seed = _seed(parsed)
    width, height = SIZES_1K[parsed.aspect_ratio or "1:1"]
    draft_size = (max(width // 4, 64), max(height // 4, 64))
    if parsed.images:
        page = edge_page(parsed.images[-1], width, height)
        draft, final = _png(page.resize(draft_size, Image.Resampling.BOX)), _png(page)
    else:
        draft = draw_line_art(seed ^ 0x5EED, *draft_size)
        final = draw_line_art(seed, width, height)
    parts = [
        {"text": "Here is your coloring page."},
        {"inlineData": {"mimeType": "image/png", "data": _b64(draft)}, "thought": True},
        {
            "inlineData": {"mimeType": "image/png", "data": _b64(final)},
            "thoughtSignature": _b64(seed.to_bytes(8, "big")),
        },
    ]
    candidate = {"index": 0, "content": {"role": "model", "parts": parts}, "finishReason": "STOP"}
    usage = _usage(model, parsed, with_image=True)
    return _envelope(model, {"candidates": [candidate], "usageMetadata": usage})


def _usage(model: str, parsed: _Parsed, *, with_image: bool) -> dict[str, Any]:
    text_tokens = max(1, math.ceil(len((parsed.prompt + parsed.system_instruction).split()) * 1.3))
    image_tokens = 258 * len(parsed.images) if "2.5" in model else 1120 * len(parsed.images)
    out_tokens = (1290 if "2.5" in model else 1120) if with_image else 0
    prompt_details = [{"modality": "TEXT", "tokenCount": text_tokens}]
    if image_tokens:
        prompt_details.append({"modality": "IMAGE", "tokenCount": image_tokens})
    usage: dict[str, Any] = {
        "promptTokenCount": text_tokens + image_tokens,
        "totalTokenCount": text_tokens + image_tokens + out_tokens,
        "promptTokensDetails": prompt_details,
    }
    if out_tokens:
        usage["candidatesTokenCount"] = out_tokens
        usage["candidatesTokensDetails"] = [{"modality": "IMAGE", "tokenCount": out_tokens}]
    return usage


def _seed(parsed: _Parsed) -> int:
    digest = hashlib.sha256(parsed.prompt.encode())
    for image in parsed.images:
        digest.update(hashlib.sha256(image).digest())
    return int.from_bytes(digest.digest()[:8], "big")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def draw_line_art(seed: int, width: int, height: int) -> bytes:
    """A PNG of black outlines (circles, polygons, stars) on white, the same for the same seed."""
    rng = random.Random(seed)
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    side = min(width, height)
    stroke = max(2, side // 150)
    margin = side // 20
    draw.rectangle((margin, margin, width - margin, height - margin), outline=0, width=stroke)
    for _ in range(rng.randint(3, 6)):
        radius = rng.uniform(0.08, 0.2) * side
        cx = rng.uniform(margin + radius, width - margin - radius)
        cy = rng.uniform(margin + radius, height - margin - radius)
        _draw_shape(draw, rng, (cx, cy), radius, stroke)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def draw_edges(data: bytes, width: int, height: int) -> bytes:
    """A PNG page of ``width`` x ``height``: the edges of the image in ``data`` (fitted inside,
    centred, aspect kept; the strongest change of any colour channel) as black lines about
    two pixels wide on white, inside a black frame. Edges are found at half the page's size
    (and drawn doubled), which keeps a photo answer about as cheap as a drawn one."""
    return _png(edge_page(data, width, height))


def edge_page(data: bytes, width: int, height: int) -> Image.Image:
    with Image.open(io.BytesIO(data)) as sent:
        half = (max(1, width // 2), max(1, height // 2))
        fitted = ImageOps.contain(ImageOps.exif_transpose(sent).convert("RGB"), half)
    soft = fitted.filter(ImageFilter.GaussianBlur(1))  # JPEG noise is not an outline
    red, green, blue = (band.filter(ImageFilter.FIND_EDGES) for band in soft.split())
    edges = ImageChops.lighter(ImageChops.lighter(red, green), blue)  # a colour edge counts
    # FIND_EDGES marks the image's own border; it is no outline of the picture.
    ImageDraw.Draw(edges).rectangle((0, 0, edges.width - 1, edges.height - 1), outline=0)
    threshold = max(EDGE_FLOOR, round(_percentile(edges.histogram(), EDGE_TOP) * EDGE_SHARE))
    lines = edges.point(lambda v: 0 if v >= threshold else 255).resize(
        (fitted.width * 2, fitted.height * 2), Image.Resampling.NEAREST)
    page = Image.new("L", (width, height), 255)
    page.paste(lines, ((width - lines.width) // 2, (height - lines.height) // 2))
    stroke = max(2, min(width, height) // 150)
    ImageDraw.Draw(page).rectangle((0, 0, width - 1, height - 1), outline=0, width=stroke)
    return page


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _percentile(histogram: list[int], fraction: float) -> int:
    """The lowest level with at least ``fraction`` of the pixels at or below it."""
    wanted, seen = fraction * sum(histogram), 0
    for level, count in enumerate(histogram):
        seen += count
        if seen >= wanted:
            return level
    return len(histogram) - 1


def _draw_shape(
    draw: ImageDraw.ImageDraw, rng: random.Random, centre: tuple[float, float], r: float, w: int
) -> None:
    cx, cy = centre
    kind = rng.choice(("circle", "polygon", "star"))
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=0, width=w)
        return
    corners = rng.randint(3, 8) if kind == "polygon" else rng.randint(5, 7)
    turn = rng.uniform(0, math.tau)
    points: list[tuple[float, float]] = []
    steps = corners if kind == "polygon" else corners * 2
    for i in range(steps):
        reach = r if kind == "polygon" or i % 2 == 0 else r * 0.45
        angle = turn + math.tau * i / steps
        points.append((cx + reach * math.cos(angle), cy + reach * math.sin(angle)))
    draw.polygon(points, outline=0, width=w)


# --- errors ---------------------------------------------------------------------------------


def _bad_key() -> _ApiError:
    message = "API key not valid. Please pass a valid API key."
    return _ApiError(
        400,
        message,
        [
            error_info("API_KEY_INVALID"),
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": message,
            },
        ],
    )


def _forced_error(code: int, faults: Faults) -> _ApiError:
    if code == 429:
        return _fault_quota_error(faults, "gemini-image")
    if code == 403:
        return _ApiError(
            403,
            "Permission denied: the API key's project is not allowed to use this API.",
            [error_info("API_KEY_SERVICE_BLOCKED")],
        )
    return _ApiError(code, MESSAGES.get(code, f"Forced status {code}."))


HANG_SECONDS = 24 * 3600.0  # a call that hangs: longer than any client waits


def _fault_quota_error(faults: Faults, model: str) -> _ApiError:
    """A 429 the faults ask for (not the quota's own accounting)."""
    period = "PerDay" if faults.gemini_429_per_day else "PerMinute"
    return _quota_error(model, faults.gemini_retry_delay_seconds,
                        f"GenerateRequests{period}PerProjectPerModel")


def _duration(seconds: float) -> str:
    """A proto Duration as the API writes it: decimal seconds, never an exponent ("7s",
    "45.837906927s", "3000000000s")."""
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds:.9f}".rstrip("0") + "s"


def _quota_error(model: str, delay_seconds: float, quota_id: str) -> _ApiError:
    delay = _duration(delay_seconds)
    metric = "requests_per_day" if "PerDay" in quota_id else "requests"
    violation = {
        "quotaMetric": f"{SERVICE}/generate_content_paid_tier_{metric}",
        "quotaId": quota_id,
        "quotaDimensions": {"location": "global", "model": model},
    }
    return _ApiError(
        429,
        "You exceeded your current quota, please check your plan and billing details. For more "
        f"information on this error, head to: {RATE_LIMITS}. Please retry in {delay}.",
        [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]},
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{"description": "Learn more about Gemini API quotas", "url": RATE_LIMITS}],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
        ],
    )


def _field_violation(field: str, description: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": field, "description": description}],
    }


def _model_resource(model: str) -> dict[str, Any]:
    return {
        "name": f"models/{model}",
        "version": "2.0",
        "displayName": model.replace("-", " ").title(),
        "description": "Local devstack stand-in for a Gemini image model.",
        "inputTokenLimit": 65536,
        "outputTokenLimit": 32768,
        "supportedGenerationMethods": ["generateContent", "countTokens", "batchGenerateContent"],
        "temperature": 1.0,
        "topP": 0.95,
        "topK": 64,
        "maxTemperature": 2.0,
    }
