"""Log sinks, configured only by the entry point.

``pretty``: readable lines for a terminal. ``json``: one JSON object per line in the shape Cloud
Logging parses (``severity``, ``message``, ``time``, the event's ids as fields, ``stack_trace``).
Both sinks pass every line through a redactor so a configured secret never reaches the output,
not even inside an exception message or traceback.
"""

from __future__ import annotations

import json
import logging
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
    """Replaces every known secret with a marker.

    Values shorter than 6 characters are not treated as secrets: replacing them would mangle
    ordinary words without protecting anything.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def scrub(self, value: Any) -> Any:
        """``value`` made JSON-ready with every string redacted (keys too), before serialisation.

        Redacting the serialised text alone misses a secret JSON escapes (a quote, a backslash).
        """
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self(str(k)): self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.scrub(v) for v in value]
        if value is None or isinstance(value, bool | int | float):
            return value
        return self(str(value))


def _fields(extra: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in extra.items() if k not in ("event", "fields")}


def _json_entry(record: Any) -> dict[str, Any]:
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
    if record["exception"] is not None:
        kind, value, tb = record["exception"]
        entry["stack_trace"] = "".join(traceback.format_exception(kind, value, tb))
    for key, value in _fields(record["extra"]).items():
        # A bound field never replaces severity, message, time or stack_trace.
        entry[key if key not in entry else f"extra_{key}"] = value
    return entry


def _patch(record: Any) -> None:
    extra = record["extra"]
    extra.setdefault("event", "log")
    fields = _fields(extra)
    extra["fields"] = " ".join(f"{k}={v}" for k, v in fields.items()) if fields else ""


class _Intercept(logging.Handler):
    """Routes records of libraries using the standard logging module through loguru's sink, so
    a library's warning is a JSON line like ours and passes the same redactor (without it, the
    standard library prints it to stderr as bare text)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).bind(
            event="library", library=record.name).log(level, record.getMessage())


def _route_standard_logging() -> None:
    """Libraries' records of WARNING and above go to loguru (the root logger's default level
    stays: httpx's INFO line per request, for one, is never even formatted)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Intercept)]:
        root.removeHandler(handler)
    root.addHandler(_Intercept())


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
        line = json.dumps(redact.scrub(_json_entry(message.record)), ensure_ascii=False)
        out.write(redact(line) + "\n")
        out.flush()

    def pretty_sink(message: Any) -> None:
        out.write(redact(str(message)))
        out.flush()

    logger.remove()
    logger.configure(patcher=_patch, extra={"event": "log"})
    _route_standard_logging()
    if log_format == "json":
        logger.add(json_sink, level=level, format="{message}", colorize=False)
    else:
        colour = hasattr(out, "isatty") and out.isatty()
        # diagnose=False: loguru's variable dump truncates long values, and a truncated secret
        # (a service-role JWT is longer than the cut-off) would slip past the redactor.
        logger.add(pretty_sink, level=level, format=_PRETTY, colorize=colour, backtrace=False,
                   diagnose=False)
