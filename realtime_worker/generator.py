"""Gemini through ``google-genai``: one async client per process, errors mapped to job errors.

The SDK's own retries are off (``attempts=1``): the dispatcher retries, so it can honour
``RetryInfo.retryDelay``, cap attempts and avoid paying twice. Messages never carry the API key
or the prompt.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import aiohttp
import httpx
from google import genai
from google.genai import errors, types
from loguru import logger

from realtime_worker.errors import (
    ConfigurationJobError,
    JobError,
    PermanentJobError,
    QuotaJobError,
    RetryableJobError,
)

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/"
API_VERSION = "v1beta"
REFUSED_REASONS = frozenset(
    {
        "SAFETY",
        "IMAGE_SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_RECITATION",
    }
)
RETRYABLE_STATUSES = frozenset({408, 500, 502, 503, 504})
TIMEOUT_STATUSES = frozenset({408, 504})
DAILY_QUOTA_DELAY = 3600.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
_RETRY_IN = re.compile(r"retry in (\d+(?:\.\d+)?)\s*s", re.IGNORECASE)
_REFUSED_MESSAGE = "This request can't be drawn"
_CONFIG_MESSAGE = "The image service is not configured correctly"


@dataclass(frozen=True)
class GenerationRequest:
    """One image to ask for: instruction text, an optional input image (photo or page)."""

    text: str
    system_instruction: str
    image: bytes | None = None
    image_mime: str = "image/jpeg"
    aspect_ratio: str = "3:4"
    job_id: UUID | None = None  # whose request: a grant claimed with the job is found by it


@dataclass(frozen=True)
class GeneratedImage:
    """The image the model drew, as returned (any format; imaging normalises it)."""

    data: bytes
    mime_type: str
    model: str
    input_tokens: int | None
    output_tokens: int | None
    latency_seconds: float


class Generator(Protocol):
    """The port the worker's core calls; raises ``JobError`` subclasses only."""

    async def generate(self, request: GenerationRequest) -> GeneratedImage: ...

    async def aclose(self) -> None: ...


class GeminiGenerator:
    """The real adapter: ``generateContent`` on a Gemini image model."""

    def __init__(
        self,
        api_key: str,
        model: str,
        base_url: str | None = None,
        timeout_seconds: float = 120,
    ) -> None:
        self.model = model
        self._client = genai.Client(
            api_key=api_key,
            vertexai=False,  # GOOGLE_GENAI_USE_VERTEXAI / _ENTERPRISE must not switch backends
            http_options=types.HttpOptions(
                base_url=base_url or DEFAULT_BASE_URL,  # GOOGLE_GEMINI_BASE_URL must not redirect
                api_version=API_VERSION,
                timeout=max(1, round(timeout_seconds * 1000)),
                # attempts=1 also turns off the SDK's hidden retry of aiohttp connection errors.
                retry_options=types.HttpRetryOptions(attempts=1),
            ),
        )

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        started = time.monotonic()
        try:
            response = await self._client.aio.models.generate_content(
                model=self.model, contents=_contents(request), config=_config(request)
            )
        except Exception as exc:  # every SDK/transport failure becomes a JobError
            raise self._translate(exc) from exc
        return self._image(response, time.monotonic() - started)

    async def check_model(self) -> None:
        """Raise ``ConfigurationJobError`` unless the key works and the model exists."""
        try:
            found = await self._client.aio.models.get(model=self.model)
        except Exception as exc:
            raise self._translate(exc) from exc
        if found.supported_actions and "generateContent" not in found.supported_actions:
            raise self._config_error("model_not_found", f"{self.model} cannot generateContent")

    async def aclose(self) -> None:
        await self._client.aio.aclose()
        self._client.close()

    # --- response ---------------------------------------------------------------------------

    def _image(self, response: types.GenerateContentResponse, latency: float) -> GeneratedImage:
        _raise_if_refused(response)
        blob = _last_image(response)
        if blob is None or not blob.data:
            reason = _finish_reason(response) or "no candidate"
            logger.bind(event="gemini_no_image", finish_reason=reason).warning(
                "Gemini answered without an image"
            )
            raise RetryableJobError("Gemini returned no image", code="no_image", max_retries=1)
        usage = response.usage_metadata
        return GeneratedImage(
            data=blob.data,
            mime_type=blob.mime_type or "image/png",
            model=response.model_version or self.model,
            input_tokens=usage.prompt_token_count if usage else None,
            output_tokens=usage.candidates_token_count if usage else None,
            latency_seconds=latency,
        )

    # --- errors -----------------------------------------------------------------------------

    def _translate(self, exc: Exception) -> JobError:
        if isinstance(exc, errors.APIError):
            return self._api_error(exc)
        if isinstance(exc, TimeoutError):
            return RetryableJobError("Gemini took too long to answer", code="gemini_timeout")
        if isinstance(exc, aiohttp.ClientError | httpx.TransportError | OSError):
            return RetryableJobError("Gemini could not be reached", code="gemini_unavailable")
        logger.bind(event="gemini_unexpected_error", error_type=type(exc).__name__).warning(
            "Unexpected error from the Gemini client"
        )
        return RetryableJobError("Gemini failed unexpectedly", code="gemini_error")

    def _api_error(self, exc: errors.APIError) -> JobError:
        code = exc.code
        if code == 429:
            return _rate_limited(exc.details)
        if code in (401, 403) or _is_config_400(exc):
            return self._config_error("gemini_auth", f"{code} {exc.status}")
        if code == 404:
            return self._config_error("model_not_found", f"404 {exc.status} for {self.model}")
        if code in RETRYABLE_STATUSES:
            kind = "gemini_timeout" if code in TIMEOUT_STATUSES else "gemini_unavailable"
            return RetryableJobError("The image service is unavailable", code=kind)
        if 400 <= code < 500:
            return PermanentJobError("The image service refused the request", code="gemini_bad_request")
        return RetryableJobError("The image service failed", code="gemini_error")

    def _config_error(self, code: str, detail: str) -> ConfigurationJobError:
        logger.bind(event="gemini_config_error", code=code, model=self.model).error(
            "Gemini refused our configuration: {}", detail
        )
        return ConfigurationJobError(_CONFIG_MESSAGE, code=code)


# --- request ---------------------------------------------------------------------------------


def _contents(request: GenerationRequest) -> list[types.PartUnion]:
    if request.image is None:
        return [request.text]
    return [types.Part.from_bytes(data=request.image, mime_type=request.image_mime), request.text]


def _config(request: GenerationRequest) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        response_modalities=["IMAGE"],
        candidate_count=1,
        image_config=types.ImageConfig(aspect_ratio=request.aspect_ratio),
        system_instruction=request.system_instruction,
    )


# --- response --------------------------------------------------------------------------------


def _raise_if_refused(response: types.GenerateContentResponse) -> None:
    feedback = response.prompt_feedback
    block = _name(feedback.block_reason) if feedback else None
    reason = _finish_reason(response)
    if block or reason in REFUSED_REASONS:
        logger.bind(event="gemini_refused", block_reason=block, finish_reason=reason).info(
            "Gemini refused to draw the request"
        )
        raise PermanentJobError(_REFUSED_MESSAGE, code="content_refused")


def _last_image(response: types.GenerateContentResponse) -> types.Blob | None:
    candidate = response.candidates[0] if response.candidates else None
    parts = candidate.content.parts if candidate and candidate.content else None
    images = [p.inline_data for p in parts or [] if p.inline_data and not p.thought]
    return images[-1] if images else None


def _finish_reason(response: types.GenerateContentResponse) -> str | None:
    candidate = response.candidates[0] if response.candidates else None
    return _name(candidate.finish_reason) if candidate else None


def _name(value: Any) -> str | None:
    """An SDK enum (or an unknown raw string) as its wire name."""
    if value is None:
        return None
    return str(getattr(value, "value", value))


# --- error details ---------------------------------------------------------------------------


def _rate_limited(body: Any) -> QuotaJobError:
    delay = _retry_delay(body)
    if _is_daily_quota(body):
        after = max(delay or 0.0, DAILY_QUOTA_DELAY)
        return QuotaJobError("Gemini's daily quota is used up", code="daily_quota", retry_after=after)
    return QuotaJobError("Gemini is rate limiting us", code="rate_limited", retry_after=delay)


def _error_details(body: Any) -> list[dict[str, Any]]:
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _of_type(body: Any, name: str) -> list[dict[str, Any]]:
    return [d for d in _error_details(body) if str(d.get("@type", "")).endswith(name)]


def _retry_delay(body: Any) -> float | None:
    for info in _of_type(body, "google.rpc.RetryInfo"):
        match = _DURATION.match(str(info.get("retryDelay", "")))
        if match:
            return float(match.group(1))
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    match = _RETRY_IN.search(message) if isinstance(message, str) else None
    return float(match.group(1)) if match else None


def _is_daily_quota(body: Any) -> bool:
    return any(
        "PerDay" in str(violation.get("quotaId", ""))
        for failure in _of_type(body, "google.rpc.QuotaFailure")
        for violation in failure.get("violations") or []
        if isinstance(violation, dict)
    )


def _is_config_400(exc: errors.APIError) -> bool:
    """A bad key (ErrorInfo API_KEY_INVALID) or billing/region (FAILED_PRECONDITION)."""
    if exc.code != 400:
        return False
    if exc.status == "FAILED_PRECONDITION":
        return True
    return any(
        str(info.get("reason", "")).startswith("API_KEY")
        for info in _of_type(exc.details, "google.rpc.ErrorInfo")
    )
