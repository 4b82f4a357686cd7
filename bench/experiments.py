"""Variants of the real worker that the pickup bench runs next to it. Bench-only: nothing here
changes the worker; each patches one class of the unmodified worker before ``realtime-worker run``.

- ``python -m bench.experiments aiohttp-rpc <run args>``: :class:`~realtime_worker.queue.SupabaseQueue`
  sends the ``worker_*`` RPCs as plain aiohttp POSTs to ``/rest/v1/rpc/<name>`` (same headers, same
  JSON, same error mapping) instead of through supabase-py's PostgREST client (which the worker
  runs on ``realtime_worker.transport``, aiohttp underneath, so both end in the same kind of
  socket). What is left between the two is supabase-py's request builders and httpx's request
  and response models, about 0.25 ms of CPU per call warm and several times that after the
  processes sat idle; the claim is on the pickup path, and this shows what that is worth.
- ``python -m bench.experiments trace <run args>``: the worker as it is, but the Realtime callback
  and the hinted claim report when they ran (``trace:event:<id>``, ``trace:claim-sent:<id>``
  datagrams to ``$BENCH_STARTS_ADDR``), so the pickup splits into hops.
- ``python -m bench.experiments claimed <run args>``: the worker as it is.
- ``python -m bench.experiments no-trim <run args>``: the worker without ``memory.release``
  (no ``malloc_trim`` after image work), for the photo burst bench.

In all three the queue reports ``claimed:<id>`` when a claim's answer reached the worker, the end
of a pickup as #7 defines it (commit → job claimed); the competitors report the same from their
own fetch (``bench.competitors``).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import aiohttp
from postgrest.exceptions import APIError

from bench.processors import CLAIMED, StartSignal
from realtime_worker import cli, listener, memory, queue, worker
from realtime_worker.jobs import Job
from realtime_worker.metrics import Metrics


class AiohttpRpc:
    """``rpc(name, params)`` as one aiohttp POST; non-2xx answers raise postgrest's APIError."""

    def __init__(self, url: str, key: str) -> None:
        self._base = f"{url.rstrip('/')}/rest/v1/rpc/"
        self._headers = {"apikey": key, "Authorization": f"Bearer {key}",
                         "Content-Type": "application/json", "Accept": "application/json"}
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, name: str, params: dict[str, Any]) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        try:
            async with self._session.post(self._base + name, data=json.dumps(params),
                                          headers=self._headers) as response:
                body = await response.read()
        except aiohttp.ClientError as exc:
            raise OSError(str(exc)) from exc
        data = json.loads(body) if body else None
        if response.status >= 300:
            raise APIError(data if isinstance(data, dict) else {"message": str(data)})
        return data


TRACE = StartSignal.from_env()


class StampedQueue(queue.SupabaseQueue):
    """Reports ``claimed:<id>`` for every job a claim's answer brought."""

    async def claim_job(self, job_id: UUID, worker: str, lease_seconds: int) -> Job | None:
        job = await super().claim_job(job_id, worker, lease_seconds)
        if job is not None:
            TRACE(CLAIMED + str(job.id), time.monotonic())
        return job

    async def claim_jobs(self, worker: str, limit: int, lease_seconds: int) -> list[Job]:
        jobs = await super().claim_jobs(worker, limit, lease_seconds)
        at = time.monotonic()
        for job in jobs:
            TRACE(CLAIMED + str(job.id), at)
        return jobs


class AiohttpQueue(StampedQueue):
    @classmethod
    def from_client(cls, client: Any, metrics: Metrics | None = None,
                    on_success: Callable[[], None] | None = None) -> queue.SupabaseQueue:
        return cls(AiohttpRpc(str(client.supabase_url), str(client.supabase_key)), metrics, on_success)


class TracedListener(listener.Listener):
    def on_insert(self, payload: Any) -> None:
        at = time.monotonic()
        with contextlib.suppress(Exception):
            TRACE(f"trace:event:{payload['data']['record']['id']}", at)
        super().on_insert(payload)


class TracedQueue(StampedQueue):
    async def claim_job(self, job_id: UUID, worker: str, lease_seconds: int) -> Job | None:
        TRACE(f"trace:claim-sent:{job_id}", time.monotonic())
        return await super().claim_job(job_id, worker, lease_seconds)


def patch(name: str) -> None:
    """Swap the class the worker module uses (module attributes, on purpose)."""
    if name == "aiohttp-rpc":
        setattr(worker, "SupabaseQueue", AiohttpQueue)  # noqa: B010
    elif name == "trace":
        setattr(worker, "SupabaseQueue", TracedQueue)  # noqa: B010
        setattr(worker, "Listener", TracedListener)  # noqa: B010
    elif name == "claimed":
        setattr(worker, "SupabaseQueue", StampedQueue)  # noqa: B010
    elif name == "no-trim":
        setattr(memory, "release", lambda: None)  # noqa: B010
    else:
        raise SystemExit(
            "usage: python -m bench.experiments aiohttp-rpc|trace|claimed|no-trim <run args>")


def main(argv: list[str]) -> int:
    patch(argv[0] if argv else "")
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
