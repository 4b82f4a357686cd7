"""``realtime-worker dev`` as a subprocess: stack and worker in one process, a job submitted from
another terminal gets done, SIGTERM stops everything (embedded Postgres included) with exit 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import Process

from bench.harness import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STOP_BUDGET_SECONDS = 10.0


def clean_env() -> dict[str, str]:
    """No database, Supabase or Gemini settings: the embedded Postgres and the fake Gemini run."""
    unset = ("DATABASE_URL", "SUPABASE", "NEXT_PUBLIC_SUPABASE", "GEMINI", "PORT")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(unset)}, "LOG_LEVEL": "INFO"}


async def wait_for_env_file(process: Process, path: Path, log: Path) -> dict[str, str]:
    """The ``--env-file`` the command writes once stack and worker are ready."""
    file = anyio.Path(path)
    with anyio.fail_after(30):
        while not await file.exists():
            assert process.returncode is None, await anyio.Path(log).read_text()
            await anyio.sleep(0.05)
    return dict(line.split("=", 1) for line in (await file.read_text()).splitlines())


async def submit(env: dict[str, str], cwd: Path) -> tuple[int, str]:
    command = [sys.executable, "-m", "realtime_worker", "submit", "a tiger eating a burger", "--wait",
               "--timeout", "60"]
    with anyio.fail_after(90):
        done = await anyio.run_process(command, env=env, cwd=cwd, check=False, stderr=subprocess.STDOUT)
    return done.returncode, done.stdout.decode()


async def health(port: int) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"http://127.0.0.1:{port}/health")).status_code


async def test_dev_runs_a_submitted_job_and_stops_on_sigterm(tmp_path: Path) -> None:
    data_dir, env_file, log = tmp_path / "ds", tmp_path / "dev.env", tmp_path / "dev.log"
    worker_port = free_port()
    command = [sys.executable, "-m", "realtime_worker", "dev", "--data-dir", str(data_dir),
               "--port", str(free_port()), "--worker-port", str(worker_port), "--env-file", str(env_file)]
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        process = await anyio.open_process(command, env=clean_env(), cwd=tmp_path, stdout=out, stderr=out)
    try:
        exports = await wait_for_env_file(process, env_file, log)
        assert await health(worker_port) == 200
        code, printed = await submit({**clean_env(), "DATABASE_URL": exports["DATABASE_URL"]}, tmp_path)
        assert code == 0, printed + log.read_text()
        assert "succeeded" in printed, printed
    finally:
        process.send_signal(signal.SIGTERM)
        started = time.perf_counter()
        with anyio.fail_after(30):
            returncode = await process.wait()
    text = log.read_text()
    assert returncode == 0, text
    assert time.perf_counter() - started < STOP_BUDGET_SECONDS, text
    assert 'realtime-worker submit "a tiger eating a burger" --wait' in text
    assert "export DATABASE_URL=" in text
    assert not (data_dir / "pg" / "postmaster.pid").exists(), text
    for name in ("SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_ANON_KEY", "GEMINI_API_KEY"):
        assert exports[name] not in text, f"{name} printed"
    assert "Traceback" not in text, text
