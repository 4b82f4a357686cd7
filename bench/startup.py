"""Start-up: process start → ``/health`` answers 200 (and → ``/ready``, subscribed), median of 5.

The worker is started the way a container starts it, ``python -m realtime_worker run`` with the
production processor (the pipeline), realtime mode; the clock starts just before the process is
spawned and ``/health`` is polled every 10 ms. ``uv run`` is not in the path (a container runs the
virtual environment's Python directly). As in the image (``UV_COMPILE_BYTECODE=1``), the
environment's packages and the worker's own are compiled to bytecode first: a local environment
may hold none (``uv sync`` does not compile, and ``PYTHONDONTWRITEBYTECODE`` keeps imports from
writing any), and compiling every module on each start is not what a container does.
"""

from __future__ import annotations

import compileall
import statistics
import sysconfig
import time
from pathlib import Path

import realtime_worker
from bench import harness
from bench.context import Context
from bench.report import Section

NAME = "startup"
RUNS = 5


async def one_start(ctx: Context, index: int) -> tuple[float, float]:
    port = harness.free_port()
    env = harness.worker_env(ctx.stack, port, None)
    spawned = time.monotonic()
    child = harness.Child.spawn(harness.worker_command(harness.PIPELINE), env,
                                ctx.folder / f"startup-{index}.log")
    worker = harness.Worker(child, port)
    try:
        await harness.wait_until(lambda: worker.answers("/health"), 30, child, "the worker")
        health = time.monotonic() - spawned
        await harness.wait_until(lambda: worker.answers("/ready"), 30, child, "the worker")
        ready = time.monotonic() - spawned
    finally:
        await child.stop()
    return health, ready


def describe(ctx: Context, starts: list[tuple[float, float]]) -> Section:
    section = ctx.results.section("Start-up: process start → /health 200")
    health = [s[0] for s in starts]
    ready = [s[1] for s in starts]
    section.table(("", "median", "min", "max", "all runs"),
                  [(name, f"{statistics.median(v):.2f} s", f"{min(v):.2f} s", f"{max(v):.2f} s",
                    ", ".join(f"{x:.2f}" for x in v)) for name, v in
                   (("→ /health 200", health), ("→ /ready 200 (subscribed)", ready))])
    section.text(f"{RUNS} starts of `python -m realtime_worker run` (pipeline processor, realtime mode), "
                 "each stopped with SIGTERM before the next.")
    return section


def compile_bytecode() -> float:
    """Compile the environment's packages and the worker's to bytecode; the seconds it took."""
    started = time.monotonic()
    for folder in (sysconfig.get_paths()["purelib"], str(Path(realtime_worker.__file__).parent)):
        compileall.compile_dir(folder, quiet=2, workers=0)
    return time.monotonic() - started


async def run(ctx: Context) -> None:
    compiled_in = compile_bytecode()
    starts = [await one_start(ctx, index) for index in range(RUNS)]
    describe(ctx, starts).text(
        f"Bytecode compiled first, as in the image ({compiled_in:.1f} s; nothing to do when it was).")
    median = statistics.median(s[0] for s in starts)
    ctx.results.target(4, "process start → /health 200 (median of 5)", "≤ 1.5 s", f"{median:.2f} s",
                       median <= 1.5)
