"""procrastinate and pgqueuer, set up to be measured exactly like our worker.

Both are benchmark-only dependencies (``uv run --group bench``); they are imported by name at
run time so the type check of ``bench/`` passes without them. Each has three parts:

- ``install``: its schema, in the bench's scratch database (next to ours);
- ``producer``: an ``enqueue()`` that commits one job of the no-op task and returns the job's
  key, on the **same insert path as ours**: one asyncpg connection sending one statement, the
  library's own enqueue SQL (procrastinate's ``procrastinate_defer_jobs_v1``, pgqueuer's
  ``build_enqueue_query``, with the arguments its Python API would pass). The bench takes its
  time when that statement returned, as it does for our INSERT;
- ``api_producer``: the same job through the library's Python API (``defer_async``,
  ``Queries.enqueue``). Their client work after the commit (procrastinate's psycopg pool and job
  objects, pgqueuer's row models) delays the moment the bench takes, which shortens the latency
  it measures; the pickup scenario shows these rows beside the others but judges on the first;
- ``worker``: ``python -m bench.competitors NAME`` runs the library's own worker in a separate
  process (DSN in ``$BENCH_DSN``); the no-op task's first line sends its start time with the
  same :class:`~bench.processors.StartSignal` our processor uses, and the library's fetch
  (procrastinate's ``JobManager.fetch_job``, pgqueuer's ``Queries.dequeue``, wrapped on the
  instance) sends ``claimed:<key>`` when it returns a job, as our queue does in
  ``bench.experiments``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import asyncpg

from bench.processors import CLAIMED, StartSignal

DSN_ENV = "BENCH_DSN"
TASK = "noop"
Enqueue = Callable[[], Awaitable[str]]


def optional(name: str) -> ModuleType:
    """A benchmark-only package, with the command that installs it when it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise RuntimeError(f"{name} is not installed: run `uv sync --group bench` "
                           "(or `uv run --group bench python -m bench ...`)") from exc


def version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as metadata_version

    try:
        return metadata_version(name)
    except PackageNotFoundError:
        return "not installed"


Statement = tuple[str, tuple[Any, ...]]  # SQL returning the new job's ``id``, and its arguments


@asynccontextmanager
async def statement_producer(dsn: str, prefix: str,
                             prepare: Callable[[asyncpg.Connection], Statement]) -> AsyncIterator[Enqueue]:
    """The insert path of every judged pickup, ours included: one asyncpg connection sends one
    statement per job; the job's key is ``prefix`` and the ``id`` the statement returned."""
    conn = await asyncpg.connect(dsn)
    try:
        sql, args = prepare(conn)

        async def enqueue() -> str:
            row = await conn.fetchrow(sql, *args)
            assert row is not None
            return f"{prefix}{row['id']}"

        yield enqueue
    finally:
        await conn.close()


# --- procrastinate -------------------------------------------------------------------------------


def procrastinate_app(dsn: str) -> Any:
    procrastinate = optional("procrastinate")
    return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))


async def procrastinate_install(dsn: str) -> None:
    app = procrastinate_app(dsn)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


@asynccontextmanager
async def procrastinate_api_producer(dsn: str) -> AsyncIterator[Enqueue]:
    app = procrastinate_app(dsn)
    async with app.open_async():
        deferrer = app.configure_task(TASK)

        async def enqueue() -> str:
            return f"procrastinate:{await deferrer.defer_async()}"

        yield enqueue


PROCRASTINATE_DEFER = (
    "SELECT unnest(procrastinate_defer_jobs_v1("
    "ARRAY[ROW('default', $1, 0, NULL, NULL, '{}'::jsonb, NULL)::procrastinate_job_to_defer_v1])) AS id")


def procrastinate_statement(dsn: str) -> AbstractAsyncContextManager[Enqueue]:
    """What ``defer_async`` sends for a task with no arguments: queue ``default``, priority 0."""
    return statement_producer(dsn, "procrastinate:", lambda _conn: (PROCRASTINATE_DEFER, (TASK,)))


async def procrastinate_worker(dsn: str) -> None:
    app = procrastinate_app(dsn)
    started = StartSignal.from_env()

    @app.task(name=TASK, pass_context=True)  # type: ignore[untyped-decorator]
    async def noop(context: Any) -> None:
        at = time.monotonic()
        started(f"procrastinate:{context.job.id}", at)

    fetch_job = app.job_manager.fetch_job

    async def fetch_and_report(*args: Any, **kwargs: Any) -> Any:
        job = await fetch_job(*args, **kwargs)
        if job is not None:
            started(f"{CLAIMED}procrastinate:{job.id}", time.monotonic())
        return job

    app.job_manager.fetch_job = fetch_and_report
    async with app.open_async():
        await app.run_worker_async(concurrency=1, install_signal_handlers=True,
                                   shutdown_graceful_timeout=5.0)


# --- pgqueuer ------------------------------------------------------------------------------------


async def pgqueuer_install(dsn: str) -> None:
    pgqueuer = optional("pgqueuer")
    conn = await asyncpg.connect(dsn)
    try:
        await pgqueuer.Queries.from_asyncpg_connection(conn).install()
    finally:
        await conn.close()


@asynccontextmanager
async def pgqueuer_api_producer(dsn: str) -> AsyncIterator[Enqueue]:
    pgqueuer = optional("pgqueuer")
    conn = await asyncpg.connect(dsn)
    try:
        queries = pgqueuer.Queries.from_asyncpg_connection(conn)

        async def enqueue() -> str:
            ids = await queries.enqueue(TASK, None)
            return f"pgqueuer:{ids[0]}"

        yield enqueue
    finally:
        await conn.close()


def pgqueuer_enqueue(conn: asyncpg.Connection) -> Statement:
    """The statement and arguments ``Queries.enqueue(TASK, None)`` sends."""
    pgqueuer = optional("pgqueuer")
    helpers = optional("pgqueuer.adapters.persistence.query_helpers")
    sql = pgqueuer.Queries.from_asyncpg_connection(conn).qbq.build_enqueue_query("raise")
    params = helpers.normalize_enqueue_params(TASK, None, 0, None, None, None)
    headers = [json.dumps(header) for header in params.headers]
    return sql, (params.priority, params.entrypoint, params.payload, params.execute_after,
                 params.dedupe_key, headers)


def pgqueuer_statement(dsn: str) -> AbstractAsyncContextManager[Enqueue]:
    return statement_producer(dsn, "pgqueuer:", pgqueuer_enqueue)


async def pgqueuer_worker(dsn: str) -> None:
    pgqueuer = optional("pgqueuer")
    conn = await asyncpg.connect(dsn)
    started = StartSignal.from_env()
    try:
        pgq = pgqueuer.PgQueuer.from_asyncpg_connection(conn)

        @pgq.entrypoint(TASK)  # type: ignore[untyped-decorator]
        async def noop(job: Any) -> None:
            at = time.monotonic()
            started(f"pgqueuer:{job.id}", at)

        dequeue = pgq.qm.queries.dequeue

        async def dequeue_and_report(*args: Any, **kwargs: Any) -> Any:
            jobs = await dequeue(*args, **kwargs)
            at = time.monotonic()
            for job in jobs:
                started(f"{CLAIMED}pgqueuer:{job.id}", at)
            return jobs

        pgq.qm.queries.dequeue = dequeue_and_report

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, pgq.shutdown.set)
        await pgq.run()
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


# --- the registry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Competitor:
    name: str
    package: str
    install: Callable[[str], Awaitable[None]]
    producer: Callable[[str], AbstractAsyncContextManager[Enqueue]]
    api_producer: Callable[[str], AbstractAsyncContextManager[Enqueue]]
    worker: Callable[[str], Coroutine[Any, Any, None]]
    wake_up: str
    api: str  # the Python call api_producer makes

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.competitors", self.name]


COMPETITORS = {
    "procrastinate": Competitor("procrastinate", "procrastinate", procrastinate_install,
                                procrastinate_statement, procrastinate_api_producer, procrastinate_worker,
                                "LISTEN/NOTIFY, concurrency 1", "`defer_async`"),
    "pgqueuer": Competitor("pgqueuer", "pgqueuer", pgqueuer_install, pgqueuer_statement,
                           pgqueuer_api_producer, pgqueuer_worker, "LISTEN/NOTIFY, batch size 10",
                           "`Queries.enqueue`"),
}


def main(argv: list[str]) -> None:
    """``python -m bench.competitors NAME``: that library's worker on ``$BENCH_DSN``."""
    competitor = COMPETITORS[argv[0]]
    asyncio.run(competitor.worker(os.environ[DSN_ENV]))


if __name__ == "__main__":
    main(sys.argv[1:])
