"""``realtime-worker dev``: the devstack and a real worker in one process tree, for local work.

Postgres (``DATABASE_URL`` or the embedded one under ``--data-dir``), the devstack on
127.0.0.1 and the worker with the default pipeline run in one task group. The first Ctrl-C or
SIGTERM stops the worker gracefully (in-flight jobs get the grace period, the rest is
released), then the stack and the embedded Postgres; a second one cancels at once (Postgres is
still stopped). The devstack's fake Gemini draws the pages unless ``GEMINI_API_KEY`` is set in
the environment: then the real Gemini is used, at Google's endpoint.

The helpers here (worker settings over a running stack, waiting for the Realtime subscription)
are shared with ``realtime-worker demo``.
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from loguru import logger

from realtime_worker import config, logs, migrate
from realtime_worker.config import WorkerSettings
from realtime_worker.console import say
from realtime_worker.worker import ProcessorFactory, Worker
from realtime_worker_devstack import stack as devstack
from realtime_worker_devstack.server import Devstack

HOST = "127.0.0.1"
DEFAULT_WORKER_PORT = 8080
SUBSCRIBE_WAIT_SECONDS = 15.0
SUBMIT_EXAMPLE = 'uv run realtime-worker submit "a tiger eating a burger" --wait'


def default_processor() -> ProcessorFactory:
    """The pipeline, imported when a worker starts (google-genai and imaging are slow to import)."""
    from realtime_worker.pipeline import open_pipeline

    return open_pipeline


def real_gemini_key(environ: Mapping[str, str]) -> str | None:
    """``GEMINI_API_KEY`` from the process environment (not ``.env``): the real Gemini is wanted."""
    return environ.get("GEMINI_API_KEY") or None


def gemini_settings(stack: Devstack, environ: Mapping[str, str]) -> dict[str, str | None]:
    """The stack's fake Gemini, or the real one (Google's endpoint) when a key is in the environment."""
    key = real_gemini_key(environ)
    if key is not None:
        return {"GEMINI_API_KEY": key, "GEMINI_BASE_URL": None}
    return {"GEMINI_API_KEY": stack.gemini_api_key, "GEMINI_BASE_URL": stack.url}


def stack_worker_settings(stack: Devstack, environ: Mapping[str, str], **overrides: Any) -> WorkerSettings:
    """Worker settings pointing at ``stack``; other settings come from the environment as usual."""
    env = stack.env()
    values: dict[str, Any] = {
        "SUPABASE_URL": env["SUPABASE_URL"],
        "SUPABASE_SERVICE_ROLE_KEY": env["SUPABASE_SERVICE_ROLE_KEY"],
        "DATABASE_URL": env["DATABASE_URL"],
        **gemini_settings(stack, environ),
        **overrides,
    }
    return config.load(WorkerSettings, **values)


def stack_secrets(stack: Devstack, settings: WorkerSettings) -> list[str]:
    """Everything the logs must never show: the stack's keys and the worker's secrets."""
    return [stack.keys.secret, stack.service_key, stack.anon_key, stack.gemini_api_key,
            *settings.secrets()]


def gemini_description(settings: WorkerSettings) -> str:
    if settings.gemini_base_url is None:
        return f"the real Gemini ({settings.gemini_model}, GEMINI_API_KEY from the environment)"
    return "the devstack's fake Gemini (set GEMINI_API_KEY to use the real one)"


async def wait_subscribed(worker: Worker, within: float = SUBSCRIBE_WAIT_SECONDS) -> bool:
    """True once the worker's Realtime subscription is live (at once when it needs none)."""
    with anyio.move_on_after(within):
        while True:
            if worker.health.realtime_subscribed or not worker.health.realtime_required:
                return True
            await anyio.sleep(0.02)  # the listener sets a flag, it has no event to wait on
    logger.bind(event="dev.realtime_pending").warning(
        "Realtime is not subscribed yet; the sweep will find new jobs")
    return False


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    """``KEY=value`` lines, owner-only, replaced in one step so a reader never sees half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    partial.chmod(0o600)
    partial.replace(path)


# --- the dev command -------------------------------------------------------------------------


@dataclass(frozen=True)
class DevOptions:
    stack: devstack.Options
    worker_port: int = DEFAULT_WORKER_PORT


def env_for_tools(stack: Devstack, settings: WorkerSettings) -> dict[str, str]:
    """What ``--env-file`` gets: the stack's variables (no real Gemini key is ever written)."""
    env = stack.env()
    if settings.gemini_base_url is None:
        env = {k: v for k, v in env.items() if not k.startswith("GEMINI_")}
    return env


def announce(stack: Devstack, options: DevOptions, settings: WorkerSettings, health_port: int,
             seconds: float) -> None:
    """How to use what is running; keys stay in the env file, never on the terminal."""
    if options.stack.env_file is not None:
        write_env_file(options.stack.env_file, env_for_tools(stack, settings))
    lines = [f"# realtime-worker dev ready in {seconds:.2f}s: devstack {stack.url}, worker health"
             f" http://{HOST}:{health_port}/health, data in {options.stack.data_dir}",
             f"# pages are drawn by {gemini_description(settings)}",
             "# submit a job from another terminal:"]
    if options.stack.database_url is None:
        lines.append(f"export DATABASE_URL={shlex.quote(stack.database_dsn)}")
    else:
        lines.append("# (with the DATABASE_URL you set, database `devstack` on that server)")
    lines.append(SUBMIT_EXAMPLE)
    if options.stack.env_file is not None:
        lines.append(f"# every variable (keys included) is in {options.stack.env_file}")
    lines.append("# Ctrl-C stops the worker (gracefully) and the stack")
    say("\n".join(lines))


async def watch_signals(stop: anyio.Event, scope: anyio.CancelScope) -> None:
    """First SIGINT/SIGTERM: graceful stop; the second cancels everything (cleanup still runs)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if stop.is_set():
                logger.bind(event="dev.signal", signal=name).warning(f"second {name}: stopping now")
                scope.cancel()
            else:
                logger.bind(event="dev.signal", signal=name).info(f"{name}: stopping gracefully")
                stop.set()


async def prepare_wakeup(stack: Devstack, settings: WorkerSettings) -> None:
    """With ``WAKEUP_SOURCE=broadcast``, the Broadcast migration (0020) on the stack's database:
    without its trigger and policies the worker would hear nothing."""
    if settings.wakeup_source == "broadcast":
        await migrate.migrate(stack.database_dsn, wakeup="broadcast")


async def run_beside(stack: Devstack, options: DevOptions, begun: float, stop: anyio.Event) -> None:
    """The worker next to the running stack, until ``stop``; then its graceful shutdown."""
    settings = stack_worker_settings(stack, os.environ, PORT=options.worker_port)
    logs.configure(settings.log_format, settings.log_level, stack_secrets(stack, settings))
    await prepare_wakeup(stack, settings)
    worker = Worker(settings, default_processor())
    async with anyio.create_task_group() as tg:
        port = await tg.start(functools.partial(worker.run, host=HOST, install_signals=False))
        await wait_subscribed(worker)
        announce(stack, options, settings, port, time.perf_counter() - begun)
        await stop.wait()
        worker.request_stop()


async def serve(options: DevOptions, *, stop: anyio.Event | None = None) -> None:
    """Stack and worker until SIGINT/SIGTERM (or ``stop``); both shut down cleanly."""
    begun, stop = time.perf_counter(), stop or anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_signals, stop, tg.cancel_scope)
        async with devstack.started(options.stack) as (stack, _user):
            await run_beside(stack, options, begun, stop)
        tg.cancel_scope.cancel()
    logger.bind(event="dev.stopped").info("worker and devstack stopped")


def cmd_dev(args: argparse.Namespace) -> int:
    """Run the devstack and a worker in one process, for local work (Ctrl-C stops both)."""
    settings = config.load(config.ToolSettings)
    secrets = [settings.database_url.get_secret_value()] if settings.database_url else []
    logs.configure(settings.log_format, settings.log_level, secrets)
    database_url = devstack.local_database(secrets[0]) if secrets else None
    stack_options = devstack.Options(data_dir=args.data_dir.resolve(), port=args.port,
                                     env_file=args.env_file, database_url=database_url)
    anyio.run(serve, DevOptions(stack_options, args.worker_port))
    return 0


def register(subs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subs.add_parser("dev", help=cmd_dev.__doc__)
    p.add_argument("--data-dir", type=Path, default=Path(".devstack"),
                   help="keys, stored objects and the embedded Postgres (default .devstack)")
    p.add_argument("--port", type=int, default=devstack.DEFAULT_PORT,
                   help=f"devstack port on 127.0.0.1 (default {devstack.DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--worker-port", type=int, default=DEFAULT_WORKER_PORT,
                   help=f"the worker's health server on 127.0.0.1 (default {DEFAULT_WORKER_PORT})")
    p.add_argument("--env-file", type=Path,
                   help="write the stack's variables (DATABASE_URL, SUPABASE_*, ...) to this file")
    p.set_defaults(func=cmd_dev)
