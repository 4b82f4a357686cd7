"""How the CLI reports what goes wrong: one readable line or one JSON object, no traceback, no secret.

Every case runs ``python -m realtime_worker`` as a subprocess in an empty folder (no ``.env``).
None needs a database or the devstack: each fails before it would connect to one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from bench.harness import free_port

if TYPE_CHECKING:
    from realtime_worker.run import Processor
    from realtime_worker.worker import WorkerContext

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SERVICE_KEY = "service-role-key-e2e-0123456789"
JOB_ID = "0d0d0d0d-0000-4000-8000-000000000001"


def clean_env(**env: str) -> dict[str, str]:
    """This process's environment without any setting of ours, plus ``env``."""
    ours = ("SUPABASE", "NEXT_PUBLIC_SUPABASE", "GEMINI", "DATABASE_URL", "LOG_", "PORT", "WORKER_")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(ours)}, **env}


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "realtime_worker", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def worker_env(log_format: str) -> dict[str, str]:
    """What ``run`` needs to start; nothing listens at SUPABASE_URL (nothing gets that far)."""
    return clean_env(SUPABASE_URL=f"http://127.0.0.1:{free_port()}", SUPABASE_SERVICE_ROLE_KEY=SERVICE_KEY,
                     GEMINI_API_KEY="gemini-key-e2e-0123456789", PORT="0", LOG_FORMAT=log_format,
                     LOG_LEVEL="INFO", PYTHONPATH=str(REPO))


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as a JSON object (fails on any other line)."""
    entries = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(entry, dict) and "severity" in entry for entry in entries), text
    return entries


# --- DATABASE_URL with an unescaped '/', '#' or '?' in the password -----------------------------


@pytest.mark.parametrize(("command", "separator"), [
    (("migrate",), "/"), (("migrate",), "#"), (("migrate",), "?"),
    (("submit", "a fox"), "/"), (("requeue", JOB_ID), "?"),
])
def test_unparsable_database_url_is_reported_without_the_password(
        command: tuple[str, ...], separator: str, tmp_path: Path) -> None:
    url = f"postgresql://postgres:Sup3r{separator}Secret@127.0.0.1:5432/postgres"
    result = run_cli(*command, env=clean_env(DATABASE_URL=url), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    [line] = result.stderr.splitlines()
    assert line.startswith("realtime-worker: ") and "DATABASE_URL" in line, line
    assert "Traceback" not in output
    for part in ("Sup3r", "Secret", "sup3r", "secret@"):
        assert part not in output, output


# --- errors raised inside the worker's task group -----------------------------------------------


@pytest.mark.parametrize("log_format", ["pretty", "json"])
def test_run_with_a_processor_that_cannot_be_imported_is_a_config_error(
        log_format: str, tmp_path: Path) -> None:
    result = run_cli("run", "--once", "--processor", "nosuch.module:thing", env=worker_env(log_format),
                     cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output  # like any configuration error found at start
    assert "Traceback" not in output and "ExceptionGroup" not in output, output
    [report] = [line for line in result.stderr.splitlines() if "nosuch" in line
                and not line.startswith("  caused by:")]
    assert report == ("realtime-worker: --processor 'nosuch.module:thing' cannot be imported:"
                      " No module named 'nosuch'"), output
    if log_format == "json":  # the worker's own lines stay one JSON object each
        assert all(entry["severity"] == "INFO" for entry in json_lines(result.stdout))


def leaky_processor(context: WorkerContext) -> AbstractAsyncContextManager[Processor]:
    """A processor factory with a bug, whose message holds a secret (the subprocess runs it)."""
    key = context.settings.supabase_service_role_key.get_secret_value()
    raise RuntimeError(f"processor exploded holding {key}")


def test_run_crash_is_logged_once_as_one_redacted_json_object(tmp_path: Path) -> None:
    result = run_cli("run", "--once", "--processor", f"{__name__}:leaky_processor",
                     env=worker_env("json"), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert result.stderr == ""  # nothing bypasses the JSON sink (and its redactor)
    assert SERVICE_KEY not in output
    [crash] = [entry for entry in json_lines(result.stdout) if entry["severity"] != "INFO"]
    assert (crash["severity"], crash["event"]) == ("CRITICAL", "worker_crashed"), crash
    assert crash["message"] == "worker crashed: RuntimeError: processor exploded holding [REDACTED]"
    assert "leaky_processor" in crash["stack_trace"]  # a bug: where it happened is kept


def exiting_processor(context: WorkerContext) -> AbstractAsyncContextManager[Processor]:
    """A processor factory that ends the process on purpose (the subprocess runs it)."""
    sys.exit(3)


def test_run_ended_by_sys_exit_keeps_its_code_and_is_no_crash(tmp_path: Path) -> None:
    result = run_cli("run", "--once", "--processor", f"{__name__}:exiting_processor",
                     env=worker_env("json"), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert "worker_crashed" not in output and "Traceback" not in output
