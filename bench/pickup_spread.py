"""How much the realtime pickup p50 moves from one worker process to the next.

Run: ``uv run --group bench python -m bench.pickup_spread [ROUNDS] [JOBS] [--what-if]``. One
Postgres and one devstack; ROUNDS (default 5) fresh ``realtime-worker run`` processes in turn,
each measured exactly as the pickup scenario measures it (sequential jobs, a 25 ms pause
between them, 20 warm-up jobs discarded), and the p50/p95 to each job's first line (and the p50
to its claim's answer) of each process printed.
``--what-if`` runs the worker of ``bench/experiments.py aiohttp-rpc`` instead. Not part of
``python -m bench all``; asserts nothing.
"""

from __future__ import annotations

import asyncio
import statistics
import sys

from bench import harness, pickup
from bench.context import Context
from bench.report import Results


async def main(rounds: int, jobs: int, experiment: str | None) -> None:
    label = "what-if (RPC over plain aiohttp)" if experiment else "realtime-worker, realtime mode"
    print(f"{label}: {rounds} worker processes × {jobs} sequential jobs (+ {pickup.WARM_UP} warm-up)")
    with harness.temp_folder() as folder:
        async with harness.postgres_server(folder) as admin, harness.scratch_database(admin) as dsn, \
                harness.devstack(dsn, folder) as stack, harness.start_receiver() as starts:
            ctx = Context(folder, admin, False, Results("python -m bench.pickup_spread", False), stack)
            p50s = []
            for index in range(rounds):
                run = await pickup.ours(ctx, starts, f"spread{index}", label, (), jobs,
                                        experiment=experiment)
                p50s.append(run.latency.p50)
                print(f"  process {index + 1}: p50 {run.latency.p50:5.2f} ms   p95 {run.latency.p95:5.2f} ms"
                      f"   (to the claim: p50 {run.claimed.p50:5.2f} ms)   load {harness.load_average()}",
                      flush=True)
    print(f"p50 across processes: min {min(p50s):.2f}  median {statistics.median(p50s):.2f}"
          f"  max {max(p50s):.2f} ms")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    asyncio.run(main(int(args[0]) if args else 5, int(args[1]) if len(args) > 1 else 200,
                     "aiohttp-rpc" if "--what-if" in sys.argv else None))
