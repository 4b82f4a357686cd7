"""Every setting, read from the environment (and `.env`) and validated once at start-up.

Only the entry point calls :func:`load`; components receive typed values.
"""

from __future__ import annotations

import math
import os
import socket
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from realtime_worker import limits
from realtime_worker.errors import ConfigError
from realtime_worker.pause import MAX_PAUSE_SECONDS

DEFAULT_MODEL = "gemini-3.1-flash-lite-image"

# US cents per generated 1K image, from the public price list (see reference/gemini-api.md).
PRICE_CENTS_PER_IMAGE: dict[str, float] = {
    "gemini-3.1-flash-lite-image": 3.4,
    "gemini-3.1-flash-image": 6.7,
    "gemini-3-pro-image": 13.4,
    "gemini-nano-banana-2.1": 3.36,
    "gemini-2.5-flash-image": 3.9,
}


# Cloud Run sends SIGKILL this long after SIGTERM (services and worker pools alike), and the
# worker needs about a second of it to give unfinished jobs back.
CLOUD_RUN_KILL_AFTER_SECONDS = 10.0
CLOUD_RUN_GRACE_MAX_SECONDS = 8.5


def on_cloud_run() -> bool:
    """Whether this process runs on Cloud Run (a service sets K_SERVICE, a worker pool
    CLOUD_RUN_WORKER_POOL)."""
    return bool(os.environ.get("K_SERVICE") or os.environ.get("CLOUD_RUN_WORKER_POOL"))


def http_url(value: str, *, path_allowed: bool) -> str:
    """An http(s) URL with a host (and port) and nothing a client would send wrongly; the
    trailing ``/`` dropped. Messages never repeat the value."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    if any(c.isspace() for c in value):
        raise ValueError("must not contain spaces")
    try:
        parts.port  # noqa: B018  # raises on a port that is not a number in range
    except ValueError:
        raise ValueError("has an invalid port") from None
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query (?) or a fragment (#)")
    if not path_allowed and parts.path.strip("/"):
        raise ValueError("must be the project's URL, without a path such as /rest/v1")
    return value.rstrip("/")


def stripped(value: Any) -> Any:
    """Surrounding whitespace removed (a trailing newline is common in a pasted secret)."""
    return value.strip() if isinstance(value, str) else value


def header_safe(value: str) -> str:
    """A value sent in an HTTP header: printable ASCII without spaces. Never repeats it."""
    if not value:
        raise ValueError("must not be empty")
    if any(not ("!" <= c <= "~") for c in value):
        raise ValueError("must be printable ASCII without spaces or control characters")
    return value


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ToolSettings(BaseSettings):
    """Settings every command reads: logging and the direct database URL for tools."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    log_format: Literal["pretty", "json"] = Field("pretty", validation_alias="LOG_FORMAT")
    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = (
        Field("INFO", validation_alias="LOG_LEVEL")
    )
    database_url: SecretStr | None = Field(None, validation_alias="DATABASE_URL")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class WorkerSettings(ToolSettings):
    """What `realtime-worker run` needs."""

    supabase_url: str = Field(
        validation_alias=AliasChoices("SUPABASE_URL", "NEXT_PUBLIC_SUPABASE_URL")
    )
    supabase_service_role_key: SecretStr = Field(validation_alias="SUPABASE_SERVICE_ROLE_KEY")
    gemini_api_key: SecretStr = Field(validation_alias="GEMINI_API_KEY")
    gemini_base_url: str | None = Field(None, validation_alias="GEMINI_BASE_URL")
    gemini_model: str = Field(DEFAULT_MODEL, validation_alias="GEMINI_MODEL", min_length=1)
    gemini_timeout_seconds: float = Field(120.0, validation_alias="GEMINI_TIMEOUT_SECONDS", gt=0)
    job_timeout_seconds: float = Field(300.0, validation_alias="JOB_TIMEOUT_SECONDS", gt=0)
    # The fleet's Gemini budget (docs/scaling.md): 0 leaves it off (each process meets 429s alone).
    gemini_rpm: float = Field(0.0, validation_alias="GEMINI_RPM", ge=0)
    gemini_max_concurrent: int = Field(16, validation_alias="GEMINI_MAX_CONCURRENT", ge=1, le=10_000)
    gemini_budget_wait_seconds: float = Field(30.0, validation_alias="GEMINI_BUDGET_WAIT_SECONDS", ge=0)
    # With the budget, a job is claimed only when its Gemini turn comes within this many seconds.
    gemini_claim_ahead_seconds: float = Field(
        0.5, validation_alias="GEMINI_CLAIM_AHEAD_SECONDS", ge=0, le=60)
    worker_mode: Literal["realtime", "poll"] = Field("realtime", validation_alias="WORKER_MODE")
    wakeup_source: Literal["postgres_changes", "broadcast"] = Field(
        "postgres_changes", validation_alias="WAKEUP_SOURCE")
    poll_interval_seconds: float = Field(5.0, validation_alias="POLL_INTERVAL_SECONDS", gt=0)
    sweep_interval_seconds: float = Field(30.0, validation_alias="SWEEP_INTERVAL_SECONDS", gt=0)
    max_concurrent_jobs: int = Field(4, validation_alias="MAX_CONCURRENT_JOBS", ge=1, le=512)
    image_threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1, validation_alias="IMAGE_THREADS", ge=1, le=64
    )
    lease_seconds: int = Field(60, validation_alias="LEASE_SECONDS", ge=3, le=3600)
    shutdown_grace_seconds: float = Field(8.0, validation_alias="SHUTDOWN_GRACE_SECONDS", ge=0)
    # The first cool-down after Gemini refuses the configuration; each pause in a row doubles it.
    config_pause_seconds: float = Field(30.0, validation_alias="CONFIG_PAUSE_SECONDS", gt=0,
                                        le=MAX_PAUSE_SECONDS)
    port: int = Field(8080, validation_alias="PORT", ge=0, le=65535)
    pause_worker: bool = Field(False, validation_alias="PAUSE_WORKER")
    worker_id: str = Field(
        default_factory=default_worker_id, validation_alias="WORKER_ID", min_length=1
    )
    clean_line_art: bool = Field(True, validation_alias="CLEAN_LINE_ART")
    # Defaults and reasons in ``limits``: the app's 10 MB upload limit, pixel limits that
    # bound decoding memory (Pillow's own bomb error begins near 179 MP).
    max_input_bytes: int = Field(limits.MAX_INPUT_BYTES, validation_alias="MAX_INPUT_BYTES",
                                 ge=1, le=100 * 1024 * 1024)
    max_input_pixels: int = Field(limits.MAX_INPUT_PIXELS, validation_alias="MAX_INPUT_PIXELS",
                                  ge=1, le=150_000_000)
    max_output_pixels: int = Field(limits.MAX_OUTPUT_PIXELS,
                                   validation_alias="MAX_OUTPUT_PIXELS", ge=1, le=150_000_000)

    @field_validator("supabase_url", "supabase_service_role_key", "gemini_api_key",
                     "gemini_base_url", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return stripped(value)

    @field_validator("supabase_service_role_key", "gemini_api_key")
    @classmethod
    def _key(cls, value: SecretStr) -> SecretStr:
        header_safe(value.get_secret_value())
        return value

    @field_validator("supabase_url")
    @classmethod
    def _project_url(cls, value: str) -> str:
        return http_url(value, path_allowed=False)

    @field_validator("shutdown_grace_seconds")
    @classmethod
    def _grace_fits_the_platform(cls, value: float) -> float:
        if on_cloud_run() and value > CLOUD_RUN_GRACE_MAX_SECONDS:
            raise ValueError(
                f"must be at most {CLOUD_RUN_GRACE_MAX_SECONDS:g} on Cloud Run, which sends SIGKILL"
                f" {CLOUD_RUN_KILL_AFTER_SECONDS:g} s after SIGTERM: unfinished jobs need the rest"
                " to be given back")
        return value

    @field_validator("gemini_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        return http_url(value, path_allowed=True) if value is not None else None

    @property
    def idle_interval_seconds(self) -> float:
        """How often the sweep runs in this mode."""
        if self.worker_mode == "poll":
            return self.poll_interval_seconds
        return self.sweep_interval_seconds

    def cost_cents(self, model: str) -> int:
        """Actual cost of one generated image, rounded up to a whole cent."""
        price = PRICE_CENTS_PER_IMAGE.get(model, PRICE_CENTS_PER_IMAGE.get(self.gemini_model, 0.0))
        return math.ceil(price)

    def secrets(self) -> list[str]:
        """Values that must never appear in logs, errors or metrics."""
        values = [self.supabase_service_role_key, self.gemini_api_key, self.database_url]
        return [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]


S = TypeVar("S", bound=ToolSettings)


def _env_name(settings_cls: type[BaseSettings], field: str) -> str:
    info = settings_cls.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return field.upper()


def describe(error: ValidationError, settings_cls: type[BaseSettings]) -> str:
    """One line per problem, each naming the environment variable, never echoing its value."""
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        name = _env_name(settings_cls, str(item["loc"][0])) if item["loc"] else "settings"
        problem = "is missing" if item["type"] == "missing" else f"is invalid: {item['msg']}"
        lines.append(f"{name} {problem}")
    return "; ".join(lines)


def load(settings_cls: type[S], **overrides: Any) -> S:
    """Read and validate the settings once; a bad value raises ConfigError naming the variable."""
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"configuration error: {describe(exc, settings_cls)}") from None
