"""Settings: read from the environment and `.env`, validated once, secrets never echoed."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from realtime_worker import config
from realtime_worker.config import ToolSettings, WorkerSettings
from realtime_worker.errors import ConfigError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SERVICE_KEY = "service-role-key-SECRET-1f4e9a"
GEMINI_KEY = "gemini-api-key-SECRET-77c0d2"
DB_PASSWORD = "db-password-SECRET-5b31"
DB_URL = f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:5432/postgres"
SECRETS = (SERVICE_KEY, GEMINI_KEY, DB_PASSWORD)
REQUIRED = {
    "SUPABASE_URL": "https://project.supabase.co/",
    "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
    "GEMINI_API_KEY": GEMINI_KEY,
    "DATABASE_URL": DB_URL,
}


def env_names(settings_cls: type[BaseSettings]) -> dict[str, list[str]]:
    """Field name -> every environment variable that sets it (first one is the primary)."""
    names: dict[str, list[str]] = {}
    for field, info in settings_cls.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names[field] = [str(choice) for choice in alias.choices]
        else:
            assert isinstance(alias, str), f"{field} has no environment variable"
            names[field] = [alias]
    return names


ALL_VARIABLES = sorted({n for cls in (ToolSettings, WorkerSettings)
                        for names in env_names(cls).values() for n in names})


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting leaks in from the real environment or a real `.env`."""
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def set_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in {**REQUIRED, **values}.items():
        monkeypatch.setenv(name, value)


def test_reads_every_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, GEMINI_BASE_URL="http://127.0.0.1:9999/gemini/", GEMINI_MODEL="m-1",
            GEMINI_TIMEOUT_SECONDS="12.5", WORKER_MODE="poll", POLL_INTERVAL_SECONDS="2",
            SWEEP_INTERVAL_SECONDS="45", MAX_CONCURRENT_JOBS="7", IMAGE_THREADS="3",
            LEASE_SECONDS="90", SHUTDOWN_GRACE_SECONDS="4", PORT="9000", LOG_FORMAT="json",
            LOG_LEVEL="debug", PAUSE_WORKER="true", WORKER_ID="w-9", CLEAN_LINE_ART="false",
            CONFIG_PAUSE_SECONDS="7.5")
    s = config.load(WorkerSettings)
    assert s.supabase_url == "https://project.supabase.co"
    assert s.supabase_service_role_key.get_secret_value() == SERVICE_KEY
    assert s.gemini_api_key.get_secret_value() == GEMINI_KEY
    assert s.database_url is not None and s.database_url.get_secret_value() == DB_URL
    assert s.gemini_base_url == "http://127.0.0.1:9999/gemini"
    assert (s.gemini_model, s.gemini_timeout_seconds, s.worker_mode) == ("m-1", 12.5, "poll")
    assert (s.poll_interval_seconds, s.sweep_interval_seconds) == (2, 45)
    assert (s.max_concurrent_jobs, s.image_threads, s.lease_seconds) == (7, 3, 90)
    assert (s.shutdown_grace_seconds, s.port) == (4, 9000)
    assert s.config_pause_seconds == 7.5
    assert (s.log_format, s.log_level) == ("json", "DEBUG")
    assert (s.pause_worker, s.worker_id, s.clean_line_art) == (True, "w-9", False)
    assert s.idle_interval_seconds == 2


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch)
    monkeypatch.delenv("DATABASE_URL")
    s = config.load(WorkerSettings)
    assert s.poll_interval_seconds == 5
    assert s.sweep_interval_seconds == 30
    assert s.port == 8080
    assert s.worker_mode == "realtime"
    assert s.idle_interval_seconds == 30
    assert s.shutdown_grace_seconds == 8
    assert s.config_pause_seconds == 30
    assert s.worker_id == f"{socket.gethostname()}-{os.getpid()}"
    assert s.image_threads == (os.cpu_count() or 1)
    assert (s.log_format, s.log_level) == ("pretty", "INFO")
    assert (s.pause_worker, s.clean_line_art) == (False, True)
    assert s.gemini_base_url is None and s.database_url is None
    assert s.gemini_model == config.DEFAULT_MODEL


def test_next_public_supabase_url_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch)
    monkeypatch.delenv("SUPABASE_URL")
    monkeypatch.setenv("NEXT_PUBLIC_SUPABASE_URL", "https://app.supabase.co")
    assert config.load(WorkerSettings).supabase_url == "https://app.supabase.co"
    monkeypatch.setenv("SUPABASE_URL", "https://worker.supabase.co")
    assert config.load(WorkerSettings).supabase_url == "https://worker.supabase.co"


def test_dotenv_in_working_directory_is_read(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    (clean_env / ".env").write_text("PORT=9100\nWORKER_MODE=poll\n", "utf-8")
    set_env(monkeypatch, WORKER_MODE="realtime")
    s = config.load(WorkerSettings)
    assert s.port == 9100
    assert s.worker_mode == "realtime"  # the environment wins over `.env`


@pytest.mark.parametrize(("variable", "value"), [
    ("PORT", "abc"),
    ("PORT", "70000"),
    ("WORKER_MODE", "fast"),
    ("SUPABASE_URL", "ftp://x"),
    ("SUPABASE_URL", "https://"),
    ("SUPABASE_URL", "https://project.supabase.co/rest/v1"),
    ("SUPABASE_URL", "https://project.supabase.co?x=1"),
    ("SUPABASE_URL", "https://project .supabase.co"),
    ("SUPABASE_SERVICE_ROLE_KEY", "service role key"),
    ("SUPABASE_SERVICE_ROLE_KEY", "key-with\x7fdel"),
    ("GEMINI_API_KEY", "gemini\nkey"),
    ("GEMINI_API_KEY", "   "),
    ("GEMINI_API_KEY", "gemini-key-\u00e9"),
    ("SUPABASE_URL", "https://project.supabase.co:port"),
    ("GEMINI_BASE_URL", "localhost:9999"),
    ("GEMINI_BASE_URL", "http:///v1beta"),
    ("GEMINI_BASE_URL", "https://proxy.example/#frag"),
    ("MAX_CONCURRENT_JOBS", "0"),
    ("IMAGE_THREADS", "0"),
    ("LEASE_SECONDS", "1"),
    ("POLL_INTERVAL_SECONDS", "0"),
    ("SWEEP_INTERVAL_SECONDS", "-3"),
    ("SHUTDOWN_GRACE_SECONDS", "soon"),
    ("GEMINI_TIMEOUT_SECONDS", "0"),
    ("JOB_TIMEOUT_SECONDS", "0"),
    ("LOG_FORMAT", "xml"),
    ("LOG_LEVEL", "loud"),
    ("PAUSE_WORKER", "maybe"),
    ("CONFIG_PAUSE_SECONDS", "0"),
    ("CONFIG_PAUSE_SECONDS", "601"),
    ("WORKER_ID", ""),
])
def test_bad_value_names_the_variable_in_one_line(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    set_env(monkeypatch, **{variable: value})
    with pytest.raises(ConfigError) as caught:
        config.load(WorkerSettings)
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(rf"\b{variable} is invalid\b", message), message
    assert message.count(" is invalid") == 1, message
    for secret in SECRETS:
        assert secret not in message


def test_surrounding_whitespace_of_keys_and_urls_is_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value pasted into Secret Manager often ends in a newline: it must not end in a header."""
    set_env(monkeypatch, SUPABASE_URL=" https://project.supabase.co/\n",
            SUPABASE_SERVICE_ROLE_KEY=f"{SERVICE_KEY}\n", GEMINI_API_KEY=f"\t{GEMINI_KEY}\r\n",
            GEMINI_BASE_URL="http://127.0.0.1:9999/gemini\n")
    s = config.load(WorkerSettings)
    assert s.supabase_url == "https://project.supabase.co"
    assert s.supabase_service_role_key.get_secret_value() == SERVICE_KEY
    assert s.gemini_api_key.get_secret_value() == GEMINI_KEY
    assert s.gemini_base_url == "http://127.0.0.1:9999/gemini"


@pytest.mark.parametrize("variable", ["SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "GEMINI_API_KEY"])
def test_missing_required_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    set_env(monkeypatch)
    monkeypatch.delenv(variable)
    with pytest.raises(ConfigError) as caught:
        config.load(WorkerSettings)
    message = str(caught.value)
    assert message == f"configuration error: {variable} is missing"
    for secret in SECRETS:
        assert secret not in message


def test_several_problems_stay_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, PORT="abc", WORKER_MODE="fast")
    monkeypatch.delenv("GEMINI_API_KEY")
    with pytest.raises(ConfigError) as caught:
        config.load(WorkerSettings)
    message = str(caught.value)
    assert "\n" not in message
    for part in ("PORT is invalid", "WORKER_MODE is invalid", "GEMINI_API_KEY is missing"):
        assert part in message


def test_tool_settings_need_no_worker_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", DB_URL)
    s = config.load(ToolSettings)
    assert s.database_url is not None and s.database_url.get_secret_value() == DB_URL
    monkeypatch.setenv("LOG_FORMAT", "yaml")
    with pytest.raises(ConfigError, match=r"^configuration error: LOG_FORMAT is invalid"):
        config.load(ToolSettings)


def test_repr_and_str_redact_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch)
    s = config.load(WorkerSettings)
    shown = repr(s) + str(s) + repr(s.model_dump()) + str(s.model_dump())
    for secret in SECRETS:
        assert secret not in shown
    assert "project.supabase.co" in shown  # non-secret values stay readable
    assert set(s.secrets()) == {SERVICE_KEY, GEMINI_KEY, DB_URL}


def test_settings_are_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch)
    s = config.load(WorkerSettings)
    with pytest.raises(ValueError, match="frozen"):
        s.port = 1


# --- .env.example documents every variable -------------------------------------------------

EXAMPLE = ROOT / ".env.example"
VARIABLE_LINE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def example_variables() -> dict[str, tuple[bool, str, list[str]]]:
    """Name -> (set by the example, value, the comment lines just above it)."""
    found: dict[str, tuple[bool, str, list[str]]] = {}
    comments: list[str] = []
    for line in EXAMPLE.read_text("utf-8").splitlines():
        match = VARIABLE_LINE.match(line)
        if match:
            assert match[2] not in found, f"{match[2]} is documented twice"
            found[match[2]] = (match[1] is None, match[3], comments)
            comments = []
        elif line.startswith("#"):
            comments.append(line.lstrip("# "))
        else:
            comments = []
    return found


def test_env_example_documents_exactly_the_settings() -> None:
    fields = {**env_names(ToolSettings), **env_names(WorkerSettings)}
    primary = {names[0] for names in fields.values()}
    assert set(example_variables()) == primary
    text = EXAMPLE.read_text("utf-8")
    for names in fields.values():
        for alias in names[1:]:
            assert alias in text, f"{alias} (accepted for {names[0]}) is not mentioned"


def test_env_example_explains_each_variable_and_its_default() -> None:
    for name, (_, _, comments) in example_variables().items():
        assert comments, f"{name} has no comment line above it"
        words = " ".join(comments).lower()
        assert "default" in words or "required" in words, f"{name}: say its default or 'required'"


def test_env_example_values_are_the_real_defaults(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    """Copying `.env.example` to `.env` loads, and what it sets equals what unset would give."""
    (clean_env / ".env").write_text(EXAMPLE.read_text("utf-8"), "utf-8")
    from_example = config.load(WorkerSettings)
    (clean_env / ".env").unlink()
    required = {v[0] for f, v in env_names(WorkerSettings).items()
                if WorkerSettings.model_fields[f].is_required()}
    assert required == {"SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "GEMINI_API_KEY"}
    for name in required:
        monkeypatch.setenv(name, example_variables()[name][1])
    defaults = config.load(WorkerSettings)
    assert from_example.model_dump() == defaults.model_dump()


def test_env_example_holds_only_placeholder_secrets() -> None:
    found = example_variables()
    for name in ("SUPABASE_SERVICE_ROLE_KEY", "GEMINI_API_KEY"):
        assert re.fullmatch(r"your-[a-z-]+", found[name][1]), f"{name} must be a placeholder"
    assert not found["DATABASE_URL"][0], "DATABASE_URL is commented out (tools only)"


def test_readme_settings_table_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    table = {line.split("|")[1].strip().strip("`") for line in readme.splitlines()
             if line.startswith("| `")}
    expected = {name for names in env_names(WorkerSettings).values() for name in names[:1]}
    assert expected <= table, f"README lacks {sorted(expected - table)}"


@pytest.mark.parametrize("platform", ["K_SERVICE", "CLOUD_RUN_WORKER_POOL"])
def test_grace_must_leave_time_to_give_jobs_back_on_cloud_run(
        monkeypatch: pytest.MonkeyPatch, platform: str) -> None:
    """Cloud Run sends SIGKILL 10 s after SIGTERM: a grace of 9 s or more leaves no time to put
    unfinished jobs back, so they would wait for their lease to expire and lose an attempt."""
    set_env(monkeypatch, SHUTDOWN_GRACE_SECONDS="9")
    monkeypatch.setenv(platform, "realtime-worker")
    with pytest.raises(ConfigError, match=r"SHUTDOWN_GRACE_SECONDS is invalid: .*Cloud Run"):
        config.load(WorkerSettings)
    set_env(monkeypatch, SHUTDOWN_GRACE_SECONDS="8.5")
    assert config.load(WorkerSettings).shutdown_grace_seconds == 8.5
    monkeypatch.delenv(platform)
    set_env(monkeypatch, SHUTDOWN_GRACE_SECONDS="30")  # elsewhere the platform decides
    assert config.load(WorkerSettings).shutdown_grace_seconds == 30
