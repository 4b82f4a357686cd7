"""``uv run --group bench python -m bench all [--quick]`` — every benchmark, side by side, one run.

``python -m bench NAME [NAME ...]`` runs some of them. One Postgres serves the whole run
(``DATABASE_URL`` when set, else an embedded ``pgserver`` in a temporary folder, deleted at the
end); the scenarios that need Supabase share one devstack process on a scratch database. Every
figure is printed as a table; ``all`` also writes ``BENCHMARKS.md`` (``--output`` elsewhere,
``--no-write`` not at all). Everything binds to 127.0.0.1, every loop is bounded, and the run
stops by itself (about 15 minutes on 2 cores; ``--quick`` about 6).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

from loguru import logger

from bench import existing, harness, idle, memory, photo_burst, pickup, sources, startup, throughput
from bench.context import Context
from bench.report import Results, load, markdown, merge, write

Scenario = Callable[[Context], Awaitable[None]]

# Run order: the latency-sensitive scenario first, on a quiet machine.
WITH_STACK: dict[str, Scenario] = {
    pickup.NAME: pickup.run,
    sources.NAME: sources.run,
    throughput.NAME: throughput.run,
    idle.NAME: idle.run,
    memory.NAME: memory.run,
    photo_burst.NAME: photo_burst.run,
    startup.NAME: startup.run,
}
WITHOUT_STACK: dict[str, Scenario] = {name: bench.run for name, bench in existing.BENCHES.items()}
SCENARIOS = {**WITH_STACK, **WITHOUT_STACK}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", choices=["all", *SCENARIOS], metavar="NAME",
                        help=f"all, or any of: {', '.join(SCENARIOS)}")
    parser.add_argument("--quick", action="store_true", help="smaller samples (a smoke run)")
    parser.add_argument("--output", type=Path,
                        help="write the report here (default for `all`: BENCHMARKS.md)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--update", type=Path, metavar="REPORT",
                        help="rerun the named scenarios and replace just their parts of REPORT")
    return parser.parse_args(argv)


def chosen(names: list[str]) -> list[str]:
    return list(SCENARIOS) if "all" in names else [n for n in SCENARIOS if n in names]


async def run_one(ctx: Context, name: str) -> None:
    started, load, before = time.monotonic(), harness.load_average(), len(ctx.results.sections)
    print(f"\n=== {name} (load {load}) ===", flush=True)
    try:
        await SCENARIOS[name](ctx)
    except Exception as exc:
        traceback.print_exc()
        ctx.results.failures.append(f"{name}: {type(exc).__name__}: {exc}".splitlines()[0])
    else:
        for section in ctx.results.sections[before:]:
            section.load = load  # the load when the scenario began, not when it wrote its table
            print("\n".join(section.lines[-40:]), flush=True)
    print(f"--- {name} took {time.monotonic() - started:.0f} s", flush=True)


async def run(names: list[str], results: Results, quick: bool) -> None:
    with harness.temp_folder() as folder:
        async with AsyncExitStack() as stack:
            admin_dsn = await stack.enter_async_context(harness.postgres_server(folder))
            results.server = "DATABASE_URL" if "DATABASE_URL" in os.environ else "embedded pgserver"
            results.postgres = await harness.server_version(admin_dsn)
            ctx = Context(folder, admin_dsn, quick, results)
            if any(name in WITH_STACK for name in names):
                dsn = await stack.enter_async_context(harness.scratch_database(admin_dsn))
                ctx.stack_ = await stack.enter_async_context(harness.devstack(dsn, folder))
            for name in names:
                await run_one(ctx, name)


def quiet_logs() -> None:
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def main(argv: list[str]) -> int:
    args = parse(argv)
    names = chosen(args.names)
    command = "uv run --group bench python -m bench " + shlex.join(argv)
    results = Results(command=command, quick=args.quick)
    quiet_logs()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C
    started = time.monotonic()
    asyncio.run(run(names, results, args.quick))
    results.load_end = harness.load_average()
    output = args.output or (Path("BENCHMARKS.md") if "all" in args.names else None)
    if args.update is not None:
        results, output = merge(load(args.update), results, names), args.output or args.update
    print("\n" + markdown(results))
    if output is not None and not args.no_write:
        write(results, output)
        print(f"written to {output}")
    print(f"whole run: {time.monotonic() - started:.0f} s")
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
