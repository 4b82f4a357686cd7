"""The ``realtime-worker`` command: one sub-command per task, each a small function.

Only the chosen command's module is imported, so ``run`` reaches its health server quickly
instead of first loading the devstack, the demo and every client library.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from importlib.metadata import entry_points
from typing import Any
from uuid import UUID

import anyio
import asyncpg
from loguru import logger

from realtime_worker import config, logs, migrate, sql, submit
from realtime_worker.errors import ConfigError, WorkerError

DEFAULT_PROCESSOR = "realtime_worker.pipeline:open_pipeline"

Command = Callable[[argparse.Namespace], int]


def _tool_settings() -> config.ToolSettings:
    settings = config.load(config.ToolSettings)
    secrets = [settings.database_url.get_secret_value()] if settings.database_url else []
    logs.configure(settings.log_format, settings.log_level, secrets)
    return settings


def cmd_sql(args: argparse.Namespace) -> int:
    """Print the migration SQL, for projects that manage migrations with the Supabase CLI."""
    sys.stdout.write(sql.full_script(harden=args.harden))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the migration to DATABASE_URL."""
    settings = _tool_settings()
    if settings.database_url is None:
        raise ConfigError("configuration error: DATABASE_URL is missing")
    dsn = settings.database_url.get_secret_value()
    applied = anyio.run(lambda: migrate.migrate(dsn, force=args.force, harden=args.harden))
    for item in applied:
        state = "already applied" if item.skipped else "applied"
        print(f"{item.version}_{item.name}: {state}")
    return 0


def worker_settings(args: argparse.Namespace) -> config.WorkerSettings:
    settings = config.load(config.WorkerSettings)
    if getattr(args, "poll_only", False):
        settings = settings.model_copy(update={"worker_mode": "poll"})
    logs.configure(settings.log_format, settings.log_level, settings.secrets())
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    """Run the worker: Realtime wake-ups plus the sweep (or the sweep alone with --poll-only)."""
    from realtime_worker.worker import Worker  # after the settings: a bad value fails fast

    worker = Worker(worker_settings(args), args.processor, owns_process=True)
    try:
        anyio.run(functools.partial(worker.run, once=args.once))
    except (Exception, BaseExceptionGroup) as exc:
        return _worker_failed(exc)
    return 0


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, or ``exc`` itself."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _worker_failed(exc: BaseException) -> int:
    """A failed ``run``: the worker's task group wraps what it raised in an exception group.

    A WorkerError inside goes on to :func:`main`, reported like one raised at start (a bad
    ``--processor`` is a configuration error). Anything else is a crash, logged once through the
    configured sink (JSON with ``severity``, secrets redacted) instead of a bare traceback.
    """
    leaves = list(_leaves(exc))
    # Not crashes: main reports these as it would outside a group (a processor factory may
    # also call sys.exit, and Ctrl-C is Ctrl-C).
    for kind in (WorkerError, KeyboardInterrupt, SystemExit):
        leaf = next((leaf for leaf in leaves if isinstance(leaf, kind)), None)
        if leaf is not None:
            raise leaf from leaf.__cause__
    summary = "; ".join(f"{type(leaf).__name__}: {leaf}" for leaf in leaves)
    shown = leaves[0] if len(leaves) == 1 else exc  # its traceback starts where the bug is
    logger.opt(exception=shown).bind(event="worker_crashed").critical(f"worker crashed: {summary}")
    return 1


def _add_harden(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--harden", action="store_true",
                        help="also revoke the direct writes of signed-in users (once the app calls"
                             " create_job; docs/security.md)")


def _add_run(subs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subs.add_parser("run", help=cmd_run.__doc__)
    p.add_argument("--poll-only", action="store_true",
                   help="no Realtime: the sweep every POLL_INTERVAL_SECONDS is the only wake-up")
    p.add_argument("--once", action="store_true", help="drain every due job, then exit")
    p.add_argument("--processor", default=DEFAULT_PROCESSOR,
                   help="module:factory of the job processor (tests use realtime_worker.testing:scripted)")
    p.set_defaults(func=cmd_run)


def _database_url() -> str:
    settings = _tool_settings()
    if settings.database_url is None:
        raise ConfigError("configuration error: DATABASE_URL is missing")
    return settings.database_url.get_secret_value()


async def _with_connection(dsn: str, work: Callable[[asyncpg.Connection], Awaitable[int]]) -> int:
    conn = await migrate.connect(dsn)
    try:
        return await work(conn)
    finally:
        await conn.close()


def cmd_submit(args: argparse.Namespace) -> int:
    """Create a job the way the app does (deduct a credit, insert it queued)."""
    params: dict[str, Any] = {"text_prompt": args.prompt, "complexity": args.complexity,
                              "line_thickness": args.line_thickness, "paper_size": args.paper_size}
    if args.title:
        params["title"] = args.title

    async def work(conn: asyncpg.Connection) -> int:
        job_id = await submit.submit(conn, params, email=args.email)
        print(f"job {job_id} queued")
        if not args.wait:
            return 0
        row = await submit.wait(conn, job_id, args.timeout)
        detail = row["error"] if row["status"] == "failed" else f"model {row['model']}"
        print(f"job {job_id} {row['status']} after {row['attempts']} attempt(s): {detail}")
        return 0 if row["status"] == "succeeded" else 1

    return anyio.run(_with_connection, _database_url(), work)


def cmd_requeue(args: argparse.Namespace) -> int:
    """Put a failed job back in the queue by hand."""

    async def work(conn: asyncpg.Connection) -> int:
        print(f"job {args.job_id}: {await submit.requeue(conn, args.job_id)}")
        return 0

    return anyio.run(_with_connection, _database_url(), work)


def _add_job_tools(subs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subs.add_parser("submit", help=cmd_submit.__doc__)
    p.add_argument("prompt", help='what to draw, e.g. "a tiger eating a burger"')
    p.add_argument("--email", default="dev@example.test", help="the user who pays the credit")
    p.add_argument("--complexity", default="standard", choices=["simple", "standard", "detailed"])
    p.add_argument("--line-thickness", default="medium", choices=["thin", "medium", "thick"])
    p.add_argument("--paper-size", default="A4", choices=["A4", "Letter"])
    p.add_argument("--title", help="printed at the top of the PDF")
    p.add_argument("--wait", action="store_true", help="wait for the outcome and print it")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait with --wait")
    p.set_defaults(func=cmd_submit)
    p = subs.add_parser("requeue", help=cmd_requeue.__doc__)
    p.add_argument("job_id", type=UUID)
    p.set_defaults(func=cmd_requeue)


def _chosen(argv: Sequence[str]) -> str | None:
    """The sub-command named on the command line, if it is one of the lazy ones."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    wanted = _chosen(argv)
    parser = argparse.ArgumentParser(prog="realtime-worker", description=__doc__.splitlines()[0])
    subs = parser.add_subparsers(dest="command", required=True)
    p = subs.add_parser("sql", help=cmd_sql.__doc__)
    _add_harden(p)
    p.set_defaults(func=cmd_sql)
    p = subs.add_parser("migrate", help=cmd_migrate.__doc__)
    p.add_argument("--force", action="store_true", help="re-apply migrations already recorded")
    _add_harden(p)
    p.set_defaults(func=cmd_migrate)
    _add_run(subs)
    _add_job_tools(subs)
    for name, (module, summary) in LAZY_COMMANDS.items():
        if wanted in (None, name):
            importlib.import_module(module).register(subs)
        else:
            subs.add_parser(name, help=summary)
    for name, summary in DEV_COMMANDS.items():
        _add_dev_command(subs, name, summary, load=wanted == name)
    return parser


# Sub-commands whose modules are imported only when chosen: name -> (module with a
# ``register(subs)`` function, the one-line help shown by ``--help``).
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("realtime_worker.check",
              "Check the configuration, Supabase (REST, Storage, Realtime, migration) and Gemini."),
}

# Commands of the local stack, a separate package of the workspace (devstack/): present in the
# development environment, absent from the production image. Each is an entry point of the group
# below whose module has a ``register(subs)`` function, loaded only when chosen.
DEV_COMMANDS: dict[str, str] = {
    "devstack": "Run the local stand-in for Supabase and Gemini (development and tests only).",
    "dev": "Run the devstack and the worker together for local work.",
    "demo": "Start everything locally, run sample jobs of each kind and write the pages to disk.",
}
DEV_COMMANDS_GROUP = "realtime_worker.commands"
DEV_PACKAGE = "realtime-worker-devstack"


def _add_dev_command(subs: Any, name: str, summary: str, *, load: bool) -> None:
    found = entry_points(group=DEV_COMMANDS_GROUP, name=name) if load else ()
    if found:
        next(iter(found)).load().register(subs)
        return
    p = subs.add_parser(name, help=summary)
    if load:
        p.set_defaults(func=functools.partial(_dev_command_absent, name))


def _dev_command_absent(name: str, _args: argparse.Namespace) -> int:
    print(f"realtime-worker: `{name}` is a development command of the {DEV_PACKAGE} package, "
          "which this installation does not include (the production image carries the worker "
          "only). From a clone of the repository: `uv run realtime-worker " + name + "`.",
          file=sys.stderr)
    return 2


def _cause_chain(exc: BaseException) -> str:
    parts, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(str(current) or type(current).__name__)
        current = current.__cause__
    return "\n  caused by: ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except WorkerError as exc:
        print(f"realtime-worker: {_cause_chain(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
