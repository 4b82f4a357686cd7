"""Running workers against the devstack: in-process (for metrics) or as CLI subprocesses."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import asyncpg
from anyio.abc import Process

from bench.harness import free_port
from realtime_worker.config import WorkerSettings
from realtime_worker.listener import ListenerSettings
from realtime_worker.testing import scripted
from realtime_worker.worker import Worker
from realtime_worker_devstack.server import Devstack
from tests.helpers import sample

SCRIPTED = "realtime_worker.testing:scripted"
FAST = {"LEASE_SECONDS": "6", "SHUTDOWN_GRACE_SECONDS": "2", "LOG_LEVEL": "WARNING"}


def settings(devstack: Devstack, **env: str) -> WorkerSettings:
    values = {**devstack.env(), "PORT": "0", "WORKER_ID": "w-test", **FAST, **env}
    return WorkerSettings.model_validate(values)


def listener_settings(devstack: Devstack, **overrides: Any) -> ListenerSettings:
    values: dict[str, Any] = {"rebuild_after_seconds": 2.0, "backoff_initial_seconds": 0.1,
                              "backoff_max_seconds": 0.5, "client_initial_backoff_seconds": 0.1,
                              **overrides}
    return ListenerSettings(url=devstack.url, key=devstack.service_key, **values)


@asynccontextmanager
async def running_worker(devstack: Devstack, *, listener: ListenerSettings | None = None,
                         **env: str) -> AsyncIterator[tuple[Worker, int]]:
    """An in-process worker with the scripted processor; yields it and its health port."""
    source = env.get("WAKEUP_SOURCE", "postgres_changes")
    worker = Worker(settings(devstack, **env), scripted,
                    listener=listener or listener_settings(devstack, source=source))
    async with anyio.create_task_group() as tg:
        port = await tg.start(functools.partial(worker.run, host="127.0.0.1", install_signals=False))
        try:
            yield worker, port
        finally:
            worker.request_stop()


def claimed(worker: Worker, source: str) -> float:
    return sample(worker.metrics, "worker_jobs_claimed_total", source=source)


def subprocess_env(devstack: Devstack, **env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE", "GEMINI"))}
    return {**base, **devstack.env(), "PORT": str(free_port()), "LOG_FORMAT": "json", **FAST, **env}


async def spawn_worker(env: dict[str, str], *args: str, log: Path | None = None,
                       processor: str = SCRIPTED) -> Process:
    """``realtime-worker run --processor realtime_worker.testing:scripted`` as a subprocess
    (``processor=DEFAULT_PROCESSOR`` for the real pipeline: Gemini, Storage, imaging)."""
    command = [sys.executable, "-m", "realtime_worker", "run", "--processor", processor, *args]
    if log is None:
        return await anyio.open_process(command, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return await anyio.open_process(command, env=env, stdout=out, stderr=out)


async def statuses(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("select status::text, count(*) from jobs group by 1")
    finally:
        await conn.close()
    return {r[0]: r[1] for r in rows}


async def ready(port: str) -> bool:
    """Whether the worker's health server on ``port`` answers ``/ready`` with 200."""
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/ready") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False
