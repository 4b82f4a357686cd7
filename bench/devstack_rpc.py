"""RPC round trips through the devstack: the official supabase async client over loopback.

Run: ``uv run python -m bench.devstack_rpc [N]`` (DATABASE_URL names a server to use; without it
an embedded Postgres is started in a temporary folder). Prints p50/p95/p99 for the client as
anyone would create it (httpx's default transport) and then for the client the worker creates
(the same httpx API on ``realtime_worker.transport``, aiohttp underneath); asserts nothing.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio
import httpx
from supabase import AsyncClientOptions, acreate_client

from bench import harness
from realtime_worker import transport
from realtime_worker_devstack.server import running

WARM_UP = 50


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(url: str, key: str, count: int, http: httpx.AsyncClient) -> list[float]:
    try:
        client = await acreate_client(url, key, AsyncClientOptions(httpx_client=http))
        args = {"p_job_id": str(uuid.uuid4()), "p_worker": "bench", "p_lease_seconds": 60}
        samples = []
        for i in range(WARM_UP + count):
            started = time.perf_counter()
            await client.rpc("worker_heartbeat", args).execute()
            if i >= WARM_UP:
                samples.append((time.perf_counter() - started) * 1000)
        return samples
    finally:
        await http.aclose()


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        async with harness.postgres_server(Path(folder)) as admin, \
                harness.scratch_database(admin) as dsn, \
                running(database_dsn=dsn, data_dir=Path(folder) / "ds") as stack:
            plain = await measure(stack.url, stack.service_key, count, httpx.AsyncClient())
            worker = await measure(stack.url, stack.service_key, count, transport.client())
    for label, samples in (("supabase-py", plain), ("supabase-py on the worker's aiohttp transport", worker)):
        print(f"worker_heartbeat via {label} over loopback, N={count} (after {WARM_UP} warm-up calls)")
        print(f"  p50 {percentile(samples, 0.50):6.2f} ms   p95 {percentile(samples, 0.95):6.2f} ms"
              f"   p99 {percentile(samples, 0.99):6.2f} ms   mean {statistics.fmean(samples):6.2f} ms")


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 500)
