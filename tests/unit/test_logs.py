"""Log output: Cloud Logging JSON, readable lines, and secrets never written."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from loguru import logger

from realtime_worker import logs

pytestmark = pytest.mark.unit

KEY = "sk-test-0123456789abcdef-SECRET"
# A service-role key is a JWT longer than loguru's variable dump cut-off (about 100 characters).
JWT = "eyJhbGciOiJIUzI1NiJ9." + "a" * 150 + ".sig-SECRET"
# JSON escapes quotes and backslashes: redacting only the serialised line would miss this one.
ESCAPED = 'pa"ss\\word-SECRET'
SECRETS = [KEY, JWT, ESCAPED]


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def reset_logger() -> Iterator[None]:
    yield
    logger.remove()
    logger.configure(patcher=None, extra={})
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logs._Intercept)]:
        root.removeHandler(handler)


def json_log(level: str = "TRACE") -> io.StringIO:
    stream = io.StringIO()
    logs.configure("json", level, secrets=SECRETS, stream=stream)
    return stream


def entries(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    assert lines
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(entry, dict) for entry in parsed)
    return parsed


def log_secrets_everywhere() -> None:
    """A secret in a message, in bound fields, and in an exception message with traceback."""
    for secret in SECRETS:
        logger.info(f"connecting with {secret}")
        logger.bind(event="config_loaded", key=secret, nested={"k": [secret]}).warning("loaded")

        def call_api(token: str) -> None:
            raise RuntimeError(f"bad key {token}")

        try:
            call_api(secret)
        except RuntimeError:
            logger.bind(event="job_failed").exception("call failed")


def test_json_line_has_cloud_logging_fields() -> None:
    stream = json_log()
    job_id = uuid.uuid4()
    logger.bind(event="job_claimed", job_id=job_id, attempt=1, worker="w-1").info("claimed a job")
    [entry] = entries(stream)
    assert entry["severity"] == "INFO"
    assert entry["message"] == "claimed a job"
    assert datetime.fromisoformat(entry["time"]).utcoffset() is not None
    assert entry["event"] == "job_claimed"
    assert entry["job_id"] == str(job_id)
    assert entry["attempt"] == 1
    assert entry["worker"] == "w-1"
    assert "stack_trace" not in entry
    assert entry["logging.googleapis.com/sourceLocation"]["function"] == (
        "test_json_line_has_cloud_logging_fields")


def test_json_stack_trace_for_exceptions() -> None:
    stream = json_log()
    try:
        int("not a number")
    except ValueError:
        logger.exception("lookup failed")
    [entry] = entries(stream)
    assert entry["severity"] == "ERROR"
    assert entry["message"] == "lookup failed"
    assert entry["stack_trace"].startswith("Traceback (most recent call last):")
    assert "ValueError: invalid literal for int()" in entry["stack_trace"]
    assert entry["event"] == "log"


@pytest.mark.parametrize(("level", "severity"), [
    ("TRACE", "DEBUG"),
    ("DEBUG", "DEBUG"),
    ("INFO", "INFO"),
    ("SUCCESS", "NOTICE"),
    ("WARNING", "WARNING"),
    ("ERROR", "ERROR"),
    ("CRITICAL", "CRITICAL"),
])
def test_levels_map_to_cloud_logging_severities(level: str, severity: str) -> None:
    stream = json_log()
    logger.log(level, "x")
    assert [e["severity"] for e in entries(stream)] == [severity]


def test_level_filters_lower_records() -> None:
    stream = json_log("WARNING")
    logger.info("hidden")
    logger.warning("shown")
    assert [e["message"] for e in entries(stream)] == ["shown"]


def test_bound_fields_never_replace_core_fields() -> None:
    stream = json_log()
    logger.bind(severity="DEBUG", message="spoof", time="then").error("real")
    [entry] = entries(stream)
    assert (entry["severity"], entry["message"]) == ("ERROR", "real")
    assert entry["time"] != "then"
    assert (entry["extra_severity"], entry["extra_message"]) == ("DEBUG", "spoof")


def test_json_never_contains_a_configured_secret() -> None:
    stream = json_log()
    log_secrets_everywhere()
    text = stream.getvalue()
    found = entries(stream)
    assert len(found) == 3 * len(SECRETS)
    for secret in SECRETS:
        assert secret not in text
        assert json.dumps(secret)[1:-1] not in text
        assert secret not in json.dumps(found, ensure_ascii=False)
    failed = [e for e in found if e["event"] == "job_failed"]
    assert all("bad key [REDACTED]" in e["stack_trace"] for e in failed)
    assert all(e["key"] == logs.REDACTED for e in found if e["event"] == "config_loaded")
    assert "connecting with [REDACTED]" in [e["message"] for e in found]


@pytest.mark.parametrize("stream", [io.StringIO(), TtyStream()], ids=["plain", "colour"])
def test_pretty_never_contains_a_configured_secret(stream: io.StringIO) -> None:
    logs.configure("pretty", "TRACE", secrets=SECRETS, stream=stream)
    log_secrets_everywhere()
    text = stream.getvalue()
    for secret in SECRETS:
        assert secret not in text
    # Not even the first 40 characters of a long key, as a truncated variable dump would show.
    assert JWT[:40] not in text
    assert text.count("bad key [REDACTED]") == len(SECRETS)
    assert text.count("Traceback (most recent call last)") == len(SECRETS)


def test_library_warnings_are_json_lines_and_redacted() -> None:
    stream = json_log("INFO")
    logs.configure("json", "INFO", secrets=SECRETS, stream=stream)  # twice: still one route
    library = logging.getLogger("realtime._async.client")
    library.error(f"Connection attempt failed: server rejected {JWT}")
    library.warning("Warning: %s is deprecated.", "set_auth")
    library.info(f"Connection was successful {KEY}")  # below the root logger's WARNING
    found = entries(stream)
    assert [(e["severity"], e["event"], e["library"]) for e in found] == [
        ("ERROR", "library", "realtime._async.client"), ("WARNING", "library", "realtime._async.client")]
    assert found[0]["message"] == "Connection attempt failed: server rejected [REDACTED]"
    assert found[1]["message"] == "Warning: set_auth is deprecated."
    assert all(secret not in stream.getvalue() for secret in SECRETS)


def test_pretty_line_shows_event_and_fields() -> None:
    stream = io.StringIO()
    logs.configure("pretty", "INFO", stream=stream)
    logger.bind(event="job_claimed", job_id="j-1", attempt=2).info("claimed")
    [line] = stream.getvalue().splitlines()
    assert "INFO" in line
    assert "job_claimed claimed" in line
    assert line.endswith("job_id=j-1 attempt=2")
    assert "\x1b[" not in line  # no colour codes when the stream is not a terminal


def test_short_values_are_not_treated_as_secrets() -> None:
    stream = json_log()
    logs.configure("json", "INFO", secrets=["", "abc"], stream=stream)
    logger.info("abc is fine")
    assert [e["message"] for e in entries(stream)] == ["abc is fine"]
