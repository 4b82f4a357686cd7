"""Log sinks, configured only by the entry point.

``pretty``: readable lines for a terminal. ``json``: one JSON object per line in the shape Cloud
Logging parses (``severity``, ``message``, ``time``, the event's ids as fields, ``stack_trace``).
Both sinks pass every line through a redactor so a configured secret never reaches the output,
not even inside an exception message or traceback.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Iterable
from typing import Any, TextIO

from loguru import logger

REDACTED = "[REDACTED]"

_SEVERITY = {
    "TRACE": "DEBUG",
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "SUCCESS": "NOTICE",
    "WARNING": "WARNING",
    "ERROR": "ERROR",
    "CRITICAL": "CRITICAL",
}

_PRETTY = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[event]}</cyan> {message} <dim>{extra[fields]}</dim>"
)


class Redactor:
    """Replaces every known secret (and its longer-than-8-character tail) with a marker."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


def _fields(extra: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in extra.items() if k not in ("event", "fields")}


def _json_line(record: Any) -> str:
    entry: dict[str, Any] = {
        "severity": _SEVERITY.get(record["level"].name, "DEFAULT"),
        "message": record["message"],
        "time": record["time"].isoformat(),
        "event": record["extra"].get("event", "log"),
        "logger": record["name"],
        "logging.googleapis.com/sourceLocation": {
            "file": record["file"].path,
            "line": str(record["line"]),
            "function": record["function"],
        },
    }
    entry.update(_fields(record["extra"]))
    if record["exception"] is not None:
        kind, value, tb = record["exception"]
        entry["stack_trace"] = "".join(traceback.format_exception(kind, value, tb))
    return json.dumps(entry, default=str, ensure_ascii=False)


def _patch(record: Any) -> None:
    extra = record["extra"]
    extra.setdefault("event", "log")
    fields = _fields(extra)
    extra["fields"] = " ".join(f"{k}={v}" for k, v in fields.items()) if fields else ""


def configure(
    log_format: str = "pretty",
    level: str = "INFO",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Install the one sink; call once from the entry point (tests may call it again)."""
    redact = Redactor(secrets)
    out = stream or (sys.stdout if log_format == "json" else sys.stderr)

    def json_sink(message: Any) -> None:
        out.write(redact(_json_line(message.record)) + "\n")
        out.flush()

    def pretty_sink(message: Any) -> None:
        out.write(redact(str(message)))
        out.flush()

    logger.remove()
    logger.configure(patcher=_patch, extra={"event": "log"})
    if log_format == "json":
        logger.add(json_sink, level=level, format="{message}", colorize=False)
    else:
        colour = hasattr(out, "isatty") and out.isatty()
        logger.add(pretty_sink, level=level, format=_PRETTY, colorize=colour, backtrace=False)
