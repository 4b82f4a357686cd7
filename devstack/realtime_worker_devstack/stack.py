"""``realtime-worker devstack``: Postgres (``DATABASE_URL`` or embedded), the schema, a test user
and the devstack on one port, until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import asyncpg
from loguru import logger

from realtime_worker import config, logs
from realtime_worker.errors import ConfigError
from realtime_worker_devstack import postgres, users
from realtime_worker_devstack.faults import Faults
from realtime_worker_devstack.server import Devstack, running

DATABASE = "devstack"
DEV_USER_EMAIL = "dev@example.test"
DEV_USER_ID = uuid.UUID("00000000-0000-4000-8000-00000000d0e0")
DEV_USER_CREDITS = 100
DEFAULT_PORT = 54321


@dataclass(frozen=True)
class Options:
    data_dir: Path
    port: int = DEFAULT_PORT
    env_file: Path | None = None
    faults: dict[str, Any] = field(default_factory=dict)
    database_url: str | None = None
    gemini_history: int = 200


def local_database(url: str) -> str:
    """``url`` when it names a Postgres on this machine; the devstack never touches a remote one
    (it may install Supabase's base schema stand-in, which must not land in a real project)."""
    host = urlsplit(url).hostname
    if host not in (None, "", "localhost", "127.0.0.1", "::1"):
        raise ConfigError("configuration error: DATABASE_URL must name a local Postgres for the devstack")
    return url


def parse_fault(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` with a JSON value (a bare word is taken as a string)."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name.strip(), json.loads(raw)
    except ValueError:
        return name.strip(), raw


async def ensure_database(admin_dsn: str, name: str = DATABASE) -> str:
    """The DSN of database ``name`` on the server, created on first start."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("select 1 from pg_database where datname = $1", name)
        if not exists:
            await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()
    return postgres.with_database(admin_dsn, name)


async def seed_user(stack: Devstack) -> uuid.UUID:
    """The development user (fixed id and e-mail), signed up with 100 credits on the first start;
    changes nothing when present."""
    async with stack.db.admin() as conn, conn.transaction():
        if not await conn.fetchval("select exists (select 1 from auth.users where id = $1)", DEV_USER_ID):
            await users.create(conn, DEV_USER_CREDITS, user_id=DEV_USER_ID, email=DEV_USER_EMAIL)
    return DEV_USER_ID


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_handles(pgdata: Path) -> None:
    """Drop processes that died without letting go of the embedded server (pgserver's handle list),
    so this run stops the server at exit instead of waiting for a process that is gone."""
    handles = pgdata / ".handle_pids.json"
    if handles.exists():
        pids = [pid for pid in json.loads(handles.read_text() or "[]") if _alive(int(pid))]
        handles.write_text(json.dumps(pids))


@asynccontextmanager
async def database(options: Options) -> AsyncIterator[str]:
    """``DATABASE_URL`` as given, else the ``devstack`` database of an embedded server, stopped at exit."""
    if options.database_url:
        yield options.database_url
        return
    forget_dead_handles(options.data_dir / "pg")
    server = await anyio.to_thread.run_sync(postgres.start_embedded, options.data_dir / "pg")
    try:
        yield await ensure_database(server.dsn)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.stop)
            logger.bind(event="devstack.postgres.stopped").info("embedded Postgres stopped")


@asynccontextmanager
async def started(options: Options) -> AsyncIterator[tuple[Devstack, uuid.UUID]]:
    """The stack running over its database, with the development user seeded; stopped at exit.

    ``serve`` runs it until a signal; ``realtime-worker dev`` and ``demo`` run a worker beside it.
    """
    faults = Faults()
    faults.update(options.faults)
    async with database(options) as dsn, running(
            database_dsn=dsn, data_dir=options.data_dir, port=options.port, faults=faults,
            gemini_history=options.gemini_history) as stack:
        yield stack, await seed_user(stack)


def announce(stack: Devstack, options: Options, user: uuid.UUID, seconds: float) -> None:
    """Print what to export (and write it to ``--env-file``)."""
    env = stack.env()
    lines = [f"{key}={value}" for key, value in env.items()]
    if options.env_file is not None:
        options.env_file.write_text("\n".join(lines) + "\n")
        options.env_file.chmod(0o600)
    out = [f"# devstack ready on {stack.url} in {seconds:.2f}s (data: {options.data_dir})",
           f"# dev user {DEV_USER_EMAIL} id {user}", *(f"export {line}" for line in lines)]
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()


async def _wait_for_signal(stop: anyio.Event) -> None:
    """Turn SIGINT/SIGTERM into ``stop``; stays installed so a second signal cannot kill the cleanup."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logger.bind(event="devstack.stopping", signal=int(signum)).info("stopping")
            stop.set()


async def serve(options: Options, *, stop: anyio.Event | None = None) -> None:
    """Run the stack until SIGINT or SIGTERM (or until ``stop`` is set)."""
    begun = time.perf_counter()
    stop = stop or anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_wait_for_signal, stop)
        async with started(options) as (stack, user):
            announce(stack, options, user, time.perf_counter() - begun)
            await stop.wait()
        tg.cancel_scope.cancel()


def cmd_devstack(args: argparse.Namespace) -> int:
    """Run the local stand-in for Supabase and Gemini on 127.0.0.1."""
    settings = config.load(config.ToolSettings)
    secrets = [settings.database_url.get_secret_value()] if settings.database_url else []
    logs.configure(settings.log_format, settings.log_level, secrets)
    faults = dict(args.fault or [])
    if args.seed is not None:
        faults["seed"] = args.seed
    try:
        Faults().update(faults)
    except ValueError as exc:
        raise ConfigError(f"configuration error: --fault: {exc}") from None
    options = Options(data_dir=args.data_dir.resolve(), port=args.port, env_file=args.env_file,
                      faults=faults, database_url=local_database(secrets[0]) if secrets else None,
                      gemini_history=args.gemini_history)
    anyio.run(serve, options)
    return 0


def register(subs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subs.add_parser("devstack", help=cmd_devstack.__doc__)
    p.add_argument("--data-dir", type=Path, default=Path(".devstack"),
                   help="keys, stored objects and the embedded Postgres (default .devstack)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port on 127.0.0.1 (default {DEFAULT_PORT})")
    p.add_argument("--env-file", type=Path, help="also write the variables to this file as KEY=value lines")
    p.add_argument("--fault", type=parse_fault, action="append", metavar="NAME=VALUE",
                   help="a fault setting (JSON value), repeatable, e.g. --fault rest_error_fraction=0.1")
    p.add_argument("--seed", type=int, help="seed of the fault injection's random source")
    p.add_argument("--gemini-history", type=int, default=200, metavar="N",
                   help="Gemini requests kept for GET /admin/gemini/requests (default 200)")
    p.set_defaults(func=cmd_devstack)
