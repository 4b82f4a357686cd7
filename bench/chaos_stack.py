"""The processes of the chaos soak: a restartable embedded Postgres, the devstack, the workers.

Postgres is an embedded ``pgserver`` under the run's folder, so it can be restarted with its own
``pg_ctl restart -m fast``. The devstack runs as its own process (``realtime-worker devstack``)
against that server, so it has to survive the restart by itself. Workers are
``realtime-worker run`` processes with the real pipeline; each restart gets a new WORKER_ID.
Everything binds to or talks to 127.0.0.1 (or the server's Unix socket) only.
"""

from __future__ import annotations

import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
from anyio.abc import Process

from bench.harness import base_env, devstack_command, read_env_file
from realtime_worker_devstack import postgres

HOST = "127.0.0.1"
STOP_SECONDS = 10.0


async def spawn(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> Process:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return await anyio.open_process(command, env=env, stdout=out, stderr=out, cwd=cwd)


async def stop_process(process: Process, sig: signal.Signals = signal.SIGTERM) -> int | None:
    """Signal, wait up to STOP_SECONDS, then SIGKILL; always reaps the child."""
    if process.returncode is None:
        process.send_signal(sig)
        with anyio.move_on_after(STOP_SECONDS):
            await process.wait()
    if process.returncode is None:
        process.kill()
        with anyio.move_on_after(STOP_SECONDS):
            await process.wait()
    await process.aclose()
    return process.returncode


# --- Postgres -----------------------------------------------------------------------------------


@dataclass
class EmbeddedPostgres:
    """A pgserver-managed Postgres whose data lives in ``folder``; restartable in place."""

    folder: Path
    server: postgres.PostgresServer

    @classmethod
    def start(cls, folder: Path) -> EmbeddedPostgres:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)  # as root, the server runs as another user and must reach its data
        return cls(folder, postgres.start_embedded(folder / "data", cleanup="delete"))

    @property
    def admin_dsn(self) -> str:
        return self.server.dsn

    def restart(self, mode: str = "fast") -> float:
        """``pg_ctl restart -m fast`` (every connection is cut; ``immediate``: a crash, recovered
        from the WAL on start); returns the seconds it took."""
        return self._pg_ctl("restart", mode=mode)

    def halt(self) -> float:
        """``pg_ctl stop -m fast``: an outage that lasts until :meth:`resume`."""
        return self._pg_ctl("stop")

    def resume(self) -> float:
        """``pg_ctl start`` after :meth:`halt`, with the options the server last ran with (its
        socket folder) that ``restart`` would reuse by itself."""
        embedded: Any = self.server.embedded
        args = shlex.split((Path(embedded.pgdata) / "postmaster.opts").read_text())[1:]
        if "-D" in args:  # pg_ctl names the data folder itself
            at = args.index("-D")
            del args[at:at + 2]
        return self._pg_ctl("start", "-o", shlex.join(args))

    def _pg_ctl(self, action: str, *options: str, mode: str = "fast") -> float:
        from pgserver import _commands  # a development dependency
        from pgserver.utils import PostmasterInfo

        embedded: Any = self.server.embedded
        pg_ctl: Any = _commands.__dict__["pg_ctl"]  # pgserver defines its commands at import
        started = time.monotonic()
        stop = ["-m", mode] if action != "start" else []
        pg_ctl(["-w", *stop, *options, "-l", str(embedded.log), action],
               pgdata=embedded.pgdata, user=embedded.system_user, timeout=60)
        if action != "stop":
            # pgserver remembers the old postmaster; without this it would not stop the new one.
            embedded._postmaster_info = PostmasterInfo.read_from_pgdata(embedded.pgdata)
        return time.monotonic() - started

    def stop(self) -> None:
        self.server.stop()


# --- the devstack -------------------------------------------------------------------------------


@dataclass
class DevstackProcess:
    """``realtime-worker devstack`` as a child process, with its admin endpoints."""

    process: Process
    env: dict[str, str]
    data_dir: Path

    @property
    def url(self) -> str:
        return self.env["SUPABASE_URL"]

    @property
    def service_key(self) -> str:
        return self.env["SUPABASE_SERVICE_ROLE_KEY"]

    def http(self) -> httpx.AsyncClient:
        key = self.service_key
        return httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(30.0, connect=5.0),
                                 headers={"apikey": key, "Authorization": f"Bearer {key}"})


async def start_devstack(run_dir: Path, dsn: str, seed: int, gemini_history: int) -> DevstackProcess:
    data_dir, env_file = run_dir / "devstack", run_dir / "devstack.env"
    command = devstack_command(data_dir, env_file, "--seed", str(seed),
                               "--gemini-history", str(gemini_history))
    env = {**base_env(), "DATABASE_URL": dsn, "LOG_FORMAT": "json", "LOG_LEVEL": "WARNING"}
    process = await spawn(command, env, run_dir / "devstack.log", run_dir)
    try:
        await _wait_for_file(process, env_file, within=60)
    except BaseException:
        await stop_process(process)
        raise
    return DevstackProcess(process, read_env_file(env_file), data_dir)


def _has_text(path: Path) -> bool:
    return path.exists() and bool(path.read_text().strip())


async def _wait_for_file(process: Process, path: Path, *, within: float) -> None:
    for _ in range(int(within / 0.1)):
        if _has_text(path):
            return
        if process.returncode is not None:
            raise RuntimeError(f"the devstack exited with {process.returncode} before it was ready")
        await anyio.sleep(0.1)
    raise TimeoutError(f"the devstack was not ready within {within} s")


# --- workers ------------------------------------------------------------------------------------


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@dataclass(frozen=True)
class Kill:
    """One ``kill -9``: which worker, when (epoch seconds, the clock Postgres uses too)."""

    worker_id: str
    at: float


@dataclass
class WorkerFleet:
    """N worker processes in slots; a killed slot is restarted under a new WORKER_ID."""

    env: dict[str, str]
    run_dir: Path
    size: int
    generations: list[int] = field(default_factory=list)
    processes: list[Process | None] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    _lock: anyio.Lock = field(default_factory=anyio.Lock)

    def worker_id(self, slot: int) -> str:
        return f"w{slot + 1}-gen{self.generations[slot]}"

    async def start(self) -> None:
        self.generations = [0] * self.size
        self.processes = [None] * self.size
        for slot in range(self.size):
            await self._launch(slot)

    async def _launch(self, slot: int) -> None:
        self.generations[slot] += 1
        worker_id = self.worker_id(slot)
        command = [sys.executable, "-m", "realtime_worker", "run"]
        env = {**self.env, "WORKER_ID": worker_id}
        self.processes[slot] = await spawn(command, env, self.run_dir / f"{worker_id}.log", self.run_dir)

    def working(self) -> list[int]:
        """Slots whose worker got through start-up (its pipeline is ready): the ones worth a kill.
        On a busy machine a start-up can outlast the kill interval, and a fleet killed while
        starting would stop doing jobs at all."""
        return [slot for slot in range(self.size)
                if '"pipeline_ready"' in _text(self.run_dir / f"{self.worker_id(slot)}.log")]

    async def kill_and_restart(self, slot: int) -> Kill:
        async with self._lock:
            process = self.processes[slot]
            assert process is not None
            kill = Kill(self.worker_id(slot), time.time())
            process.kill()
            with anyio.move_on_after(STOP_SECONDS):
                await process.wait()
            await process.aclose()
            self.kills.append(kill)
            await self._launch(slot)
            return kill

    async def revive_crashed(self) -> list[str]:
        """Restart workers that died without being killed; returns them (each crash is a finding)."""
        crashed = []
        async with self._lock:
            for slot, process in enumerate(self.processes):
                if process is not None and process.returncode is not None:
                    crashed.append(f"{self.worker_id(slot)} exited with {process.returncode}")
                    await process.aclose()
                    await self._launch(slot)
        return crashed

    async def stop(self) -> dict[str, int | None]:
        """SIGTERM every worker at once (graceful shutdown), SIGKILL after STOP_SECONDS; exit codes
        by id. One after another, the later ones would go on claiming, and sweep the leases of one
        that was stopping: reaps without a kill."""
        codes: dict[str, int | None] = {}

        async def stop(slot: int, process: Process) -> None:
            codes[self.worker_id(slot)] = await stop_process(process)

        async with self._lock, anyio.create_task_group() as tg:
            for slot, process in enumerate(self.processes):
                if process is not None:
                    tg.start_soon(stop, slot, process)
        self.processes = [None] * len(self.processes)
        return codes


def worker_env(devstack: DevstackProcess, settings: dict[str, str]) -> dict[str, str]:
    keys = ("SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "GEMINI_BASE_URL", "GEMINI_API_KEY")
    return {**base_env(), **{k: devstack.env[k] for k in keys}, "PORT": "0", "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO", **settings}


async def restart_postgres(pg: EmbeddedPostgres) -> tuple[float, float]:
    """Restart the server; returns (epoch seconds at the start, seconds it was away)."""
    at = time.time()
    took = await anyio.to_thread.run_sync(pg.restart)
    return at, took
