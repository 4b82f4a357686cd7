"""Why a pickup costs more than its warm parts: one exchange, back to back and after a pause.

``uv run --group bench python -m bench.cold_path [N]`` times each exchange below ``N`` times
(default 400) back to back, then ``N`` times each after a 25 ms pause (the pickup bench's pause
between jobs), and prints both p50s and their difference:

- one process: ``json.dumps`` of a small dict, and the worker's ``job started`` JSON log
  line (``realtime_worker.logs``, to ``/dev/null``): code that ran a moment ago, run again;
- two processes, a socketpair and blocking ``recv``: the kernel waking an idle process;
- two processes, an asyncio TCP echo: plus one event-loop turn on each side;
- an HTTP request the devstack answers without Postgres (no key: 401), over aiohttp;
- ``worker_claim_job`` through supabase-py on the worker's transport, as the worker sends it;
  then the same claim with one layer less each time: an httpx POST on the worker's transport
  (no PostgREST client), a plain aiohttp POST (no httpx), and one asyncpg query (no HTTP: what
  procrastinate and pgqueuer do).

Exchanges measured together (the two in-process ones, the five devstack ones) take turns
sample by sample, so they see the same machine. The pause is an ``asyncio.sleep`` throughout.

The devstack runs in its own process on a scratch database (``DATABASE_URL``'s server, else an
embedded one). Not part of ``python -m bench all``; asserts nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import aiohttp
import asyncpg

from bench import harness
from bench.harness import Spread
from realtime_worker import transport

PAUSE = 0.025
WARM_UP = 20
Exchange = Callable[[], Awaitable[Any]]
DIRECT_CLAIM = "select * from public.worker_claim_job($1, 'cold-path', 60)"


def fork(child: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            child()
        finally:
            os._exit(0)
    return pid


def echo_blocking(sock: socket.socket, parents: socket.socket) -> None:
    parents.close()  # else the parent closing its end would never end this loop
    while data := sock.recv(64):
        sock.send(data)


def echo_asyncio(listener: socket.socket) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(64):
            writer.write(data)

    async def serve() -> None:
        server = await asyncio.start_server(handle, sock=listener)
        await server.serve_forever()

    asyncio.run(serve())


def blocking(call: Callable[[], object]) -> Exchange:
    """A plain call as an exchange for :func:`timed` (it holds the event loop while it runs)."""
    async def exchange() -> None:
        call()

    return exchange


async def in_process_rows(count: int, sink: TextIO) -> list[tuple[str, float, float]]:
    from loguru import logger

    from realtime_worker import logs

    entry = {"severity": "INFO", "message": "job started", "job_id": str(uuid.uuid4()), "attempt": 1}
    logs.configure("json", "INFO", secrets=["a-secret-of-some-length"], stream=sink)
    log = logger.bind(job_id=entry["job_id"], attempt=1, worker="cold-path")
    try:
        return await timed({
            "json.dumps of a small dict": blocking(lambda: json.dumps(entry)),
            "the worker's `job started` JSON log line": blocking(
                lambda: log.bind(event="job_started", source="realtime").info("job started")),
        }, count)
    finally:
        logger.remove()


async def socketpair_row(count: int) -> tuple[str, float, float]:
    ours, theirs = socket.socketpair()
    pid = fork(lambda: echo_blocking(theirs, ours))
    theirs.close()

    def once() -> None:
        ours.send(b"x")
        ours.recv(64)

    try:
        return (await timed({"socketpair, blocking recv": blocking(once)}, count))[0]
    finally:
        ours.close()
        await asyncio.to_thread(os.waitpid, pid, 0)


async def timed(exchanges: dict[str, Exchange], count: int) -> list[tuple[str, float, float]]:
    """Each exchange's p50 back to back and after a :data:`PAUSE`, in ms. The exchanges take turns
    sample by sample, so a slow minute of the machine falls on all of them alike."""
    for exchange in exchanges.values():
        for _ in range(WARM_UP):
            await exchange()
    samples: dict[str, dict[float, list[float]]] = {name: {0.0: [], PAUSE: []} for name in exchanges}
    for pause in (0.0, PAUSE):
        for _ in range(count):
            for name, exchange in exchanges.items():
                if pause:
                    await asyncio.sleep(pause)
                started = time.perf_counter()
                await exchange()
                samples[name][pause].append((time.perf_counter() - started) * 1000)
    return [(name, Spread.of(by[0.0]).p50, Spread.of(by[PAUSE]).p50) for name, by in samples.items()]


async def echo_row(count: int) -> tuple[str, float, float]:
    listener = socket.create_server(("127.0.0.1", 0))
    pid = fork(lambda: echo_asyncio(listener))
    port = listener.getsockname()[1]
    listener.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def once() -> None:
        writer.write(b"x")
        await reader.read(64)

    try:
        return (await timed({"asyncio TCP echo": once}, count))[0]
    finally:
        writer.close()
        os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(os.waitpid, pid, 0)


async def devstack_rows(dsn: str, count: int) -> list[tuple[str, float, float]]:
    from supabase import AsyncClientOptions, acreate_client

    with harness.temp_folder() as folder:
        async with harness.devstack(dsn, folder) as stack, aiohttp.ClientSession() as session:
            key = stack.env["SUPABASE_SERVICE_ROLE_KEY"]
            conn = await asyncpg.connect(dsn)
            jobs = iter(await harness.insert_batch(conn, harness.script(0), 4 * (WARM_UP + 2 * count)))
            rpc = f"{stack.url}/rest/v1/rpc/worker_claim_job"
            headers = {"apikey": key, "Authorization": f"Bearer {key}",
                       "Content-Type": "application/json", "Accept": "application/json"}
            http = transport.client()
            client = await acreate_client(stack.url, key,
                                          AsyncClientOptions(httpx_client=http, postgrest_client_timeout=30))

            def params() -> dict[str, Any]:
                return {"p_job_id": str(next(jobs)), "p_worker": "cold-path", "p_lease_seconds": 60}

            async def refused() -> None:
                async with session.post(rpc, data="{}") as answer:
                    assert answer.status == 401, answer.status
                    await answer.read()

            async def through_supabase() -> None:
                assert (await client.rpc("worker_claim_job", params()).execute()).data

            async def through_httpx() -> None:
                assert (await http.post(rpc, content=json.dumps(params()), headers=headers)).json()

            async def plain_post() -> None:
                async with session.post(rpc, data=json.dumps(params()), headers=headers) as answer:
                    assert json.loads(await answer.read())

            async def direct() -> None:
                assert await conn.fetch(DIRECT_CLAIM, next(jobs))

            try:
                return await timed({
                    "HTTP to the devstack, answered 401 (no Postgres)": refused,
                    "claim: supabase-py, worker's transport": through_supabase,
                    "claim: httpx POST, worker's transport": through_httpx,
                    "claim: plain aiohttp POST": plain_post,
                    "claim: asyncpg, straight to Postgres": direct,
                }, count)
            finally:
                await http.aclose()
                await conn.close()


def main(count: int) -> None:
    rows: list[tuple[str, float, float]] = []

    with open(os.devnull, "w") as sink:  # where the log line goes
        async def measure(dsn: str) -> None:
            rows.extend(await in_process_rows(count, sink))
            rows.append(await socketpair_row(count))
            rows.append(await echo_row(count))
            rows.extend(await devstack_rows(dsn, count))

        harness.run_on_scratch_database(measure)
    print(f"{count} exchanges each; p50 in ms; 'idle' = after a {PAUSE * 1000:.0f} ms pause")
    print(f"{'exchange':52} {'warm':>7} {'idle':>7} {'idle − warm':>12}")
    for name, warm, idle in rows:
        print(f"{name:52} {warm:7.3f} {idle:7.3f} {idle - warm:12.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400)
