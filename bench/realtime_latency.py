"""INSERT commit → realtime-py callback through the devstack's Realtime server.

``uv run python -m bench.realtime_latency [inserts]`` builds a scratch database (on the server in
``DATABASE_URL``, else an embedded Postgres from ``pgserver``) with the Supabase base, the app's
schema and the worker's migration. Three processes, as in ``perf-anchors.md``: the devstack's
Realtime server (aiohttp on 127.0.0.1), a producer that inserts one job per command and reports
when its committing ``INSERT`` returned, and this one, where a realtime-py client subscribed to
INSERT on ``public.jobs`` notes when its callback starts. ``time.perf_counter`` is the machine's
monotonic clock, so the two instants compare. Inserts are sequential; 20 warm-up inserts are
discarded. It prints p50/p95/p99 and asserts nothing.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time

import asyncpg
from aiohttp import web
from loguru import logger
from realtime import AsyncRealtimeClient
from realtime.types import PostgresChangesPayload, RealtimePostgresChangesListenEvent

from bench.harness import Spread, run_on_scratch_database
from realtime_worker_devstack import postgres, users
from realtime_worker_devstack.db import Database
from realtime_worker_devstack.faults import Faults
from realtime_worker_devstack.keys import Keys
from realtime_worker_devstack.realtime import RealtimeServer

WARM_UP = 20
ANCHOR = "floor B (bare NOTIFY → aiohttp → realtime-py, perf-anchors.md): 1.03 / 1.23 / 1.48 ms"
JOB_SQL = ("insert into public.jobs (user_id, params_json)"
           " values ($1, '{\"text_prompt\": \"a cat\"}') returning id")


# --- child processes -----------------------------------------------------------------------------


async def serve(config: dict[str, str], commands: asyncio.StreamReader) -> None:
    """Run the Realtime server on 127.0.0.1; print its port; stop when stdin closes."""
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    db = Database(config["dsn"])
    await db.open()
    server = RealtimeServer(db, Keys(config["secret"]), Faults())
    await server.start()
    app = web.Application()
    app.add_routes(server.routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    try:
        await commands.read()
    finally:
        await server.stop()
        await runner.cleanup()
        await db.close()


async def produce(config: dict[str, str], commands: asyncio.StreamReader) -> None:
    """Insert one job per line on stdin; print its id and the perf_counter before and after the INSERT."""
    conn = await asyncpg.connect(config["dsn"])
    try:
        user = await users.sign_up(conn)
        print("ready", flush=True)
        while await commands.readline():
            sent = time.perf_counter()
            job_id = await conn.fetchval(JOB_SQL, user)
            committed = time.perf_counter()
            print(job_id, sent, committed, flush=True)
    finally:
        await conn.close()


async def child_main(mode: str) -> None:
    """A child: its configuration (the DSN, the JWT secret) is the first line on stdin, never argv."""
    commands = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    config = json.loads(await commands.readline())
    await (serve if mode == "--serve" else produce)(config, commands)


class Child:
    """This module run in another mode in a child process, talked to over stdin/stdout."""

    def __init__(self, process: asyncio.subprocess.Process, first_line: str) -> None:
        self.process = process
        self.first_line = first_line

    @classmethod
    async def start(cls, mode: str, config: dict[str, str]) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.realtime_latency", mode,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps(config).encode() + b"\n")
        line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        return cls(process, line.decode().strip())

    async def ask(self, line: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()
        return (await self.process.stdout.readline()).decode().strip()

    async def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        await asyncio.wait_for(self.process.wait(), timeout=30)


# --- the measurement -----------------------------------------------------------------------------


async def measure(url: str, key: str, producer: Child, count: int) -> Timings:
    arrivals: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

    def on_insert(payload: PostgresChangesPayload) -> None:
        arrived = time.perf_counter()
        record = payload["data"].get("record") or {}
        arrivals.put_nowait((str(record.get("id")), arrived))

    subscribed = asyncio.Event()
    client = AsyncRealtimeClient(f"{url}/realtime/v1", key)
    try:
        channel = client.channel("bench").on_postgres_changes(
            RealtimePostgresChangesListenEvent.Insert, on_insert, table="jobs")
        channel.on_system(lambda _payload: subscribed.set())
        await channel.subscribe()
        await asyncio.wait_for(subscribed.wait(), timeout=10)
        return await sample(producer, arrivals, count)
    finally:
        await client.close()


Timings = tuple[list[float], list[float]]


async def sample(producer: Child, arrivals: asyncio.Queue[tuple[str, float]], count: int) -> Timings:
    """Milliseconds from the INSERT's return, and from its start, to the callback."""
    from_commit: list[float] = []
    from_start: list[float] = []
    for index in range(WARM_UP + count):
        job_id, sent, committed = (await producer.ask("insert")).split()
        seen, arrived = await asyncio.wait_for(arrivals.get(), timeout=10)
        if seen != job_id:
            raise RuntimeError(f"insert {index}: expected {job_id}, received {seen}")
        if index >= WARM_UP:
            from_commit.append((arrived - float(committed)) * 1000)
            from_start.append((arrived - float(sent)) * 1000)
    return from_commit, from_start


async def run(dsn: str, count: int) -> None:
    version = await prepare(dsn)
    keys = Keys(secrets.token_urlsafe(32))
    server = await Child.start("--serve", {"dsn": dsn, "secret": keys.secret})
    producer = await Child.start("--produce", {"dsn": dsn})
    try:
        timings = await measure(f"http://127.0.0.1:{server.first_line}", keys.service_role,
                                producer, count)
    finally:
        await producer.stop()
        await server.stop()
    report(version, count, timings)


async def prepare(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        await postgres.install_schema(conn)
        version: str = await conn.fetchval("show server_version")
    finally:
        await conn.close()
    return version


def report(version: str, count: int, timings: Timings) -> None:
    print(f"Postgres {version}; {count} sequential inserts, {WARM_UP} warm-up discarded; "
          "server, producer and client in three processes")
    for label, values in zip(("INSERT returned", "INSERT started"), timings, strict=True):
        p50, p95, p99 = Spread.of(values).percentiles
        print(f"{label} → realtime-py callback (ms): p50 {p50:.2f}  p95 {p95:.2f}  p99 {p99:.2f}  "
              f"min {min(values):.2f}  max {max(values):.2f}")
    print(f"target (from INSERT returned): p50 ≤ 2 ms and p99 ≤ 5 ms; {ANCHOR}")


def main(argv: list[str]) -> None:
    if argv[:1] in (["--serve"], ["--produce"]):
        asyncio.run(child_main(argv[0]))
        return
    count = int(argv[0]) if argv else 300
    run_on_scratch_database(lambda dsn: run(dsn, count))


if __name__ == "__main__":
    main(sys.argv[1:])
