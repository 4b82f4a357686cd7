"""The database contract (the ``worker_*`` functions) behind one port.

:class:`JobQueue` is what the dispatcher and sweeper use; :class:`SupabaseQueue` is the real
adapter (PostgREST RPC as plain aiohttp POSTs, ``realtime_worker.rpc``). ``testing.InMemoryQueue``
implements the same port for tests of the core.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from realtime_worker.errors import QueueError
from realtime_worker.jobs import Job, JobResult
from realtime_worker.metrics import Metrics


class JobQueue(Protocol):
    async def claim_job(self, job_id: UUID, worker: str, lease_seconds: int) -> Job | None: ...

    async def claim_jobs(self, worker: str, limit: int, lease_seconds: int) -> list[Job]: ...

    async def heartbeat(self, job_id: UUID, worker: str, lease_seconds: int) -> bool: ...

    async def complete(self, job_id: UUID, worker: str, result: JobResult) -> bool: ...

    async def fail(self, job_id: UUID, worker: str, error: str, code: str,
                   retry_in_seconds: int | None) -> str | None: ...

    async def defer(self, job_id: UUID, worker: str, error: str, code: str,
                    retry_in_seconds: int) -> str | None: ...

    async def release(self, job_id: UUID, worker: str) -> bool: ...

    async def reap_expired(self, limit: int) -> int: ...


RpcCall = Callable[[str, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class QueueDepth:
    """Queued jobs that are due now, and how long the oldest of them has waited."""

    due: int
    oldest_due_age_seconds: float


def _queue_error(name: str, exc: Exception) -> QueueError | None:
    """PostgREST and transport errors as QueueError; None for anything else (a bug: re-raised)."""
    import httpx  # imported here: the client libraries load after the health server is up
    from postgrest.exceptions import APIError

    if isinstance(exc, APIError):
        return QueueError(f"{name} failed: {exc.code} {exc.message}")
    if isinstance(exc, (httpx.HTTPError, OSError)):
        return QueueError(f"{name} failed: {type(exc).__name__}: {exc}")
    return None


class SupabaseQueue:
    """The contract over PostgREST RPC; library errors become :class:`QueueError`."""

    def __init__(self, rpc: RpcCall, metrics: Metrics | None = None,
                 on_success: Callable[[], None] | None = None) -> None:
        self._rpc = rpc
        self._metrics = metrics
        self._on_success = on_success

    async def call(self, name: str, params: dict[str, Any]) -> Any:
        """One RPC through this adapter (counted, errors as :class:`QueueError`): for the other
        ``worker_*`` functions, such as the Gemini budget's (``budget.SupabaseBudget``)."""
        return await self._call(name, params)

    async def _call(self, name: str, params: dict[str, Any]) -> Any:
        if self._metrics is not None:
            self._metrics.db_requests.labels(name).inc()
        try:
            result = await self._rpc(name, params)
        except Exception as exc:
            error = _queue_error(name, exc)
            if error is None:
                raise
            raise error from exc
        if self._on_success is not None:
            self._on_success()
        return result

    async def claim_job(self, job_id: UUID, worker: str, lease_seconds: int) -> Job | None:
        rows = await self._call("worker_claim_job", {
            "p_job_id": str(job_id), "p_worker": worker, "p_lease_seconds": lease_seconds})
        return Job.from_row(rows[0]) if rows else None

    async def claim_jobs(self, worker: str, limit: int, lease_seconds: int) -> list[Job]:
        rows = await self._call("worker_claim_jobs", {
            "p_worker": worker, "p_limit": limit, "p_lease_seconds": lease_seconds})
        return [Job.from_row(row) for row in rows or []]

    async def heartbeat(self, job_id: UUID, worker: str, lease_seconds: int) -> bool:
        return bool(await self._call("worker_heartbeat", {
            "p_job_id": str(job_id), "p_worker": worker, "p_lease_seconds": lease_seconds}))

    async def complete(self, job_id: UUID, worker: str, result: JobResult) -> bool:
        return bool(await self._call("worker_complete_job", {
            "p_job_id": str(job_id), "p_worker": worker, "p_result": result.to_json()}))

    async def fail(self, job_id: UUID, worker: str, error: str, code: str,
                   retry_in_seconds: int | None) -> str | None:
        status = await self._call("worker_fail_job", {
            "p_job_id": str(job_id), "p_worker": worker, "p_error": error,
            "p_error_code": code, "p_retry_in_seconds": retry_in_seconds})
        return str(status) if status is not None else None

    async def defer(self, job_id: UUID, worker: str, error: str, code: str,
                    retry_in_seconds: int) -> str | None:
        status = await self._call("worker_defer_job", {
            "p_job_id": str(job_id), "p_worker": worker, "p_error": error,
            "p_error_code": code, "p_retry_in_seconds": retry_in_seconds})
        return str(status) if status is not None else None

    async def release(self, job_id: UUID, worker: str) -> bool:
        return bool(await self._call("worker_release_job", {
            "p_job_id": str(job_id), "p_worker": worker}))

    async def reap_expired(self, limit: int) -> int:
        return int(await self._call("worker_reap_expired", {"p_limit": limit}) or 0)

    async def depth(self) -> QueueDepth:
        """One cheap query (``worker_queue_depth``), for /metrics at scrape time."""
        data = await self._call("worker_queue_depth", {})
        return QueueDepth(int(data["due"]), float(data["oldest_due_age_seconds"]))
