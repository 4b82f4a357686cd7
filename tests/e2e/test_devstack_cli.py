"""``realtime-worker devstack`` as a subprocess, with the embedded Postgres (no DATABASE_URL)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from bench.harness import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


async def read_exports(process: Process) -> dict[str, str]:
    """The ``export KEY=value`` lines the command prints once it is ready."""
    assert process.stdout is not None
    exports: dict[str, str] = {}
    buffer = ""
    async for chunk in TextReceiveStream(process.stdout):
        buffer += chunk
        for line in buffer.splitlines():
            if line.startswith("export "):
                key, _, value = line.removeprefix("export ").partition("=")
                exports[key] = value
        if "DATABASE_URL" in exports:
            return exports
    raise AssertionError(f"the devstack exited before it was ready: {buffer!r}")


async def start(data_dir: Path, port: int, env_file: Path,
                log: Path) -> tuple[Process, dict[str, str], float]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    command = ["uv", "run", "--project", str(REPO), "realtime-worker", "devstack", "--data-dir",
               str(data_dir), "--port", str(port), "--env-file", str(env_file)]
    started = time.perf_counter()
    with log.open("ab") as stderr:  # the child keeps its own copy of the descriptor
        process = await anyio.open_process(command, env=env, cwd=data_dir.parent, stderr=stderr)
    with anyio.fail_after(30):
        exports = await read_exports(process)
    return process, exports, time.perf_counter() - started


async def stop(process: Process, pgdata: Path) -> None:
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    process.send_signal(signal.SIGTERM)
    with anyio.fail_after(15):
        assert await process.wait() == 0
    assert not (pgdata / "postmaster.pid").exists()
    assert not alive(postmaster)


def alive(pid: int) -> bool:
    """True while the process runs (a zombie left for a non-reaping init counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


async def dev_user(exports: dict[str, str]) -> list[dict[str, object]]:
    key = exports["SUPABASE_SERVICE_ROLE_KEY"]
    async with httpx.AsyncClient(base_url=exports["SUPABASE_URL"], headers={"apikey": key}) as http:
        response = await http.get("/rest/v1/credits", params={"select": "user_id,balance"})
    response.raise_for_status()
    rows: list[dict[str, object]] = response.json()
    return rows


async def set_balance(exports: dict[str, str], balance: int) -> None:
    key = exports["SUPABASE_SERVICE_ROLE_KEY"]
    async with httpx.AsyncClient(base_url=exports["SUPABASE_URL"], headers={"apikey": key}) as http:
        response = await http.patch("/rest/v1/credits", params={"balance": "gte.0"},
                                    json={"balance": balance})
    assert response.status_code == 204


async def test_devstack_command_starts_serves_and_restarts(tmp_path: Path) -> None:
    data_dir, env_file, log = tmp_path / "stack", tmp_path / "dev.env", tmp_path / "stderr.log"
    port = free_port()
    process, exports, seconds = await start(data_dir, port, env_file, log)
    print(f"devstack cold start (embedded Postgres, schema, seed): {seconds:.2f}s")
    try:
        assert exports["SUPABASE_URL"] == f"http://127.0.0.1:{port}"
        written = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        assert written == exports
        users = await dev_user(exports)
        assert [row["balance"] for row in users] == [100]
        await set_balance(exports, 42)
    finally:
        await stop(process, data_dir / "pg")
    process, again, seconds = await start(data_dir, port, env_file, log)
    print(f"devstack warm start (same data folder): {seconds:.2f}s")
    try:
        assert again["SUPABASE_URL"] == exports["SUPABASE_URL"]
        assert await dev_user(exports) == [{**users[0], "balance": 42}]  # the first run's key still works
    finally:
        await stop(process, data_dir / "pg")
    assert "Traceback" not in log.read_text()
