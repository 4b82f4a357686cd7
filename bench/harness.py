"""What every scenario of ``python -m bench`` shares: Postgres, the devstack, workers, timing.

One Postgres for the whole run (``DATABASE_URL`` when set, else an embedded ``pgserver`` under a
temporary folder), one scratch database on it with the app's schema and the worker's migration
(installed by the devstack), the devstack in its own process on 127.0.0.1, and workers started as
``python -m realtime_worker run`` subprocesses the way production starts them. Job starts are
reported by the processors in the worker processes as UDP datagrams ``<job key> <monotonic>``
to a receiver in the bench process; ``time.monotonic`` is ``CLOCK_MONOTONIC``, one clock for
every process on the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.processors import STARTS_ENV as STARTS_ENV
from realtime_worker_devstack import postgres
from realtime_worker_devstack.stack import DEV_USER_ID

SCRIPTED = "realtime_worker.testing:scripted"
PIPELINE = "realtime_worker.pipeline:open_pipeline"
TIMESTAMPED = "bench.processors:timestamped"
INSERT_JOB = "insert into public.jobs (user_id, params_json) values ($1, $2::jsonb) returning id"


# --- numbers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """p50/p95/p99 (and count, min, max) of samples, in the samples' unit."""

    count: int
    p50: float
    p95: float
    p99: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if len(values) < 2:
            only = values[0] if values else float("nan")
            return cls(len(values), only, only, only, only, only)
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return cls(len(values), cuts[49], cuts[94], cuts[98], min(values), max(values))

    @property
    def percentiles(self) -> tuple[float, float, float]:
        return self.p50, self.p95, self.p99


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


# --- Postgres ------------------------------------------------------------------------------------


@asynccontextmanager
async def postgres_server(folder: Path) -> AsyncIterator[str]:
    """The admin DSN of ``DATABASE_URL``'s server, or of an embedded one deleted at the end."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    server = await asyncio.to_thread(postgres.start_embedded, folder / "pgdata", cleanup="delete")
    try:
        yield server.dsn
    finally:
        await asyncio.to_thread(server.stop)


@asynccontextmanager
async def scratch_database(admin_dsn: str, prefix: str = "rw_bench") -> AsyncIterator[str]:
    """An empty database on the server, dropped at the end."""
    name = f"{prefix}_{secrets.token_hex(3)}"
    dsn = await postgres.create_database(admin_dsn, name)
    try:
        yield dsn
    finally:
        await postgres.drop_database(admin_dsn, name)


def run_on_scratch_database(main: Callable[[str], Coroutine[Any, Any, None]]) -> None:
    """``main(dsn)`` on a scratch database of :func:`postgres_server`'s server, for the probes run
    on their own (``python -m bench.claim_scale`` …); prints which server they measured."""
    async def run() -> None:
        print("server: DATABASE_URL" if os.environ.get("DATABASE_URL") else "server: embedded (pgserver)")
        with temp_folder() as folder:
            async with postgres_server(folder) as admin, scratch_database(admin) as dsn:
                await main(dsn)

    asyncio.run(run())


async def server_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        version: str = await conn.fetchval("show server_version")
    finally:
        await conn.close()
    return version


# --- child processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# The caller's variables that configure the worker or the stack (``realtime_worker.config``):
# a child gets only what its scenario sets.
_OWN_PREFIXES = ("SUPABASE", "NEXT_PUBLIC", "GEMINI", "DATABASE_URL", "WORKER_", "PAUSE_WORKER",
                 "MAX_CONCURRENT", "POLL_", "SWEEP_", "LEASE_", "LOG_", "PORT", "SHUTDOWN_",
                 "IMAGE_THREADS", "CLEAN_LINE_ART", "WAKEUP_")


def base_env() -> dict[str, str]:
    """This environment without anything that would configure a child worker or stack."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}


@dataclass
class Child:
    """A subprocess with its log file; stopped with SIGTERM (then SIGKILL) on the way out."""

    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def spawn(cls, command: Sequence[str], env: dict[str, str], log: Path) -> Child:
        with log.open("ab") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        return cls(process, log)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    async def stop(self, within: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after ``within`` seconds; the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.process.wait, within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return await asyncio.to_thread(self.process.wait)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass(frozen=True)
class Stack:
    """The devstack process and what a worker needs to use it."""

    child: Child
    env: dict[str, str]
    dsn: str

    @property
    def url(self) -> str:
        return self.env["SUPABASE_URL"]


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.partition("=") for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, _, value in pairs}


def devstack_command(data_dir: Path, env_file: Path, *options: str) -> list[str]:
    """``realtime-worker devstack`` on a free port, writing its variables to ``env_file``."""
    return [sys.executable, "-m", "realtime_worker", "devstack", "--data-dir", str(data_dir),
            "--port", str(free_port()), "--env-file", str(env_file), *options]


@asynccontextmanager
async def devstack(dsn: str, folder: Path) -> AsyncIterator[Stack]:
    """``realtime-worker devstack`` on ``dsn`` in its own process; installs the schema."""
    env_file = folder / "devstack.env"
    env = {**base_env(), "DATABASE_URL": dsn, "LOG_LEVEL": "WARNING"}
    command = devstack_command(folder / "devstack", env_file)
    child = Child.spawn(command, env, folder / "devstack.log")
    try:
        await wait_until(lambda: env_file.exists() and "DATABASE_URL" in env_file.read_text(), 90,
                         child, "the devstack")
        yield Stack(child, read_env_file(env_file), dsn)
    finally:
        await child.stop()


def admin(stack: Stack, path: str, body: dict[str, object] | None = None) -> None:
    """POST to the devstack's ``/admin`` (``faults``, ``realtime/cut`` …) with the service key."""
    request = urllib.request.Request(f"{stack.url}/admin/{path}", data=json.dumps(body or {}).encode(),
                                     method="POST", headers={"apikey": stack.env["SUPABASE_SERVICE_ROLE_KEY"],
                                                             "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:  # loopback only
        response.read()


def set_faults(stack: Stack, changes: dict[str, object]) -> None:
    admin(stack, "faults", changes)


async def wait_until(check: Callable[[], bool], within: float, child: Child | None, what: str) -> float:
    """Seconds until ``check()`` is true; raises with the child's log tail on timeout or exit."""
    started = time.monotonic()
    while not check():
        if child is not None and not child.alive():
            raise RuntimeError(f"{what} exited with {child.process.returncode}:\n{child.tail()}")
        if time.monotonic() - started > within:
            raise TimeoutError(f"{what} not ready after {within:.0f} s:\n"
                               f"{child.tail() if child else ''}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@dataclass
class Worker:
    """A ``realtime-worker run`` subprocess and its health port."""

    child: Child
    port: int

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError):
            return 0, ""

    def answers(self, path: str) -> bool:
        return self.get(path, timeout=0.5)[0] == 200

    async def ready(self, within: float = 60.0) -> float:
        return await wait_until(lambda: self.answers("/ready"), within, self.child, "the worker")

    def metrics(self) -> dict[str, float]:
        """The Prometheus samples of ``/metrics`` (name with labels → value)."""
        status, text = self.get("/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def rss_mib(self) -> float:
        return rss_mib(self.child.pid)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def worker_command(processor: str, *args: str, experiment: str | None = None) -> list[str]:
    """``python -m realtime_worker run …`` (or through ``bench.experiments`` for a what-if)."""
    entry = ["bench.experiments", experiment] if experiment else ["realtime_worker"]
    return [sys.executable, "-m", *entry, "run", "--processor", processor, *args]


def worker_env(stack: Stack, port: int, starts: tuple[str, int] | None, **extra: str) -> dict[str, str]:
    env = {**base_env(), **stack.env, "PORT": str(port), "LOG_FORMAT": "json", "LOG_LEVEL": "INFO",
           "WORKER_ID": f"bench-{port}", **extra}
    if starts is not None:
        env[STARTS_ENV] = f"{starts[0]}:{starts[1]}"
    return env


@asynccontextmanager
async def worker(stack: Stack, folder: Path, name: str, *, processor: str = TIMESTAMPED,
                 args: Sequence[str] = (), starts: tuple[str, int] | None = None,
                 experiment: str | None = None, **env: str) -> AsyncIterator[Worker]:
    """A worker subprocess on the devstack, ready (``/ready`` answers 200) when yielded."""
    port = free_port()
    child = Child.spawn(worker_command(processor, *args, experiment=experiment),
                        worker_env(stack, port, starts, **env),
                        folder / f"worker-{name}.log")
    running = Worker(child, port)
    try:
        await running.ready()
        yield running
    finally:
        await child.stop()


# --- job starts reported by the processors -------------------------------------------------------


class Starts(asyncio.DatagramProtocol):
    """Receives ``<job key> <monotonic>`` datagrams; waiters get the start time of their job."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self._waiters: dict[str, asyncio.Future[float]] = {}
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        key, _, stamp = data.decode().partition(" ")
        self.seen.setdefault(key, float(stamp))
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(self.seen[key])

    async def wait(self, key: str, within: float) -> float:
        if key in self.seen:
            return self.seen[key]
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[key] = waiter
        try:
            return await asyncio.wait_for(waiter, within)
        finally:
            self._waiters.pop(key, None)

    def clear(self) -> None:
        self.seen.clear()


@asynccontextmanager
async def start_receiver() -> AsyncIterator[Starts]:
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        Starts, local_addr=("127.0.0.1", 0))
    protocol.address = transport.get_extra_info("sockname")[:2]
    try:
        yield protocol
    finally:
        transport.close()


# --- jobs ----------------------------------------------------------------------------------------


def script(duration: float) -> str:
    return json.dumps({"script": {"duration": duration}})


PIPELINE_PARAMS = json.dumps({"text_prompt": "a lighthouse by the sea", "title": "Bench"})


async def insert_batch(conn: asyncpg.Connection, params: str, count: int) -> list[uuid.UUID]:
    """``count`` jobs in one transaction (one commit); their ids."""
    async with conn.transaction():
        rows = await conn.fetch(
            "insert into public.jobs (user_id, params_json)"
            " select $1, $2::jsonb from generate_series(1, $3) returning id", DEV_USER_ID, params, count)
    return [row["id"] for row in rows]


async def clear_jobs(conn: asyncpg.Connection) -> None:
    """Finished bench jobs out of the way so every scenario starts from an empty queue."""
    await conn.execute("delete from public.assets")
    await conn.execute("delete from public.credit_events where job_id is not null")
    await conn.execute("delete from public.jobs")


@contextlib.contextmanager
def temp_folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="rw-bench-") as folder:
        yield Path(folder)
