"""The health server (aiohttp on ``$PORT``): ``/health``, ``/ready`` and ``/metrics``.

Bodies are small JSON documents (Prometheus text for ``/metrics``); no secrets, prompts or
stack traces ever leave through it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from aiohttp import web
from anyio.abc import TaskStatus
from loguru import logger

from realtime_worker.errors import QueueError
from realtime_worker.metrics import Metrics

if TYPE_CHECKING:
    from realtime_worker.pause import PauseStatus
    from realtime_worker.queue import QueueDepth


def _no_config_pause() -> PauseStatus | None:
    return None


@dataclass
class HealthState:
    """What the worker reports about itself; updated by the running parts."""

    mode: str
    tick: Callable[[], float] = time.monotonic
    stale_after_seconds: float = 60.0
    realtime_required: bool = False
    realtime_subscribed: bool = False
    paused: bool = False  # PAUSE_WORKER: set by the operator, claims nothing at all
    # The dispatcher's pause after Gemini refused the worker's configuration (while it lasts).
    config_pause: Callable[[], PauseStatus | None] = _no_config_pause
    database_ok_at: float | None = None
    database_check: Callable[[], Awaitable[None]] | None = None
    database_fresh_seconds: float = 30.0
    # The queue's depth, read once per scrape of /metrics (never on a timer).
    queue_depth: Callable[[], Awaitable[QueueDepth]] | None = None
    started_at: float = field(default_factory=time.monotonic)

    def mark_database_ok(self) -> None:
        """A database call just succeeded: ``/ready`` need not ask again for a while."""
        self.database_ok_at = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self.tick() < self.stale_after_seconds

    async def database_ok(self) -> bool:
        fresh = self.database_ok_at is not None and (
            time.monotonic() - self.database_ok_at < self.database_fresh_seconds)
        if fresh or self.database_check is None:
            return fresh
        try:
            await self.database_check()
        except Exception:
            return False
        self.mark_database_ok()
        return True


def build_app(state: HealthState, metrics: Metrics) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        ok = state.alive()
        return web.json_response({"status": "ok" if ok else "stalled", "mode": state.mode},
                                 status=200 if ok else 503)

    async def ready(_: web.Request) -> web.Response:
        checks = {"database": await state.database_ok()}
        if state.realtime_required:
            checks["realtime"] = state.realtime_subscribed
        pause = state.config_pause()
        checks["gemini_config"] = pause is None
        ok = all(checks.values())
        body = {"ready": ok, "mode": state.mode, "paused": state.paused,
                "config_pause": _pause_json(pause), "checks": checks}
        return web.json_response(body, status=200 if ok else 503)

    async def metrics_text(_: web.Request) -> web.Response:
        await _read_depth(state, metrics)
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_text)
    return app


async def _read_depth(state: HealthState, metrics: Metrics) -> None:
    """Fresh queue gauges for this scrape; on a database error they keep their last values."""
    if state.queue_depth is None:
        return
    try:
        depth = await state.queue_depth()
    except QueueError as exc:  # a scrape must not fail because the database did
        logger.bind(event="queue_depth_failed").warning(f"queue depth not read: {exc}")
        return
    metrics.queue_due.set(depth.due)
    metrics.queue_oldest_age.set(depth.oldest_due_age_seconds)


def _pause_json(pause: PauseStatus | None) -> dict[str, Any] | None:
    if pause is None:
        return None
    return {"reason": pause.reason, "error_code": pause.error_code,
            "resumes_in_seconds": round(pause.resumes_in_seconds, 1),
            "cool_down_seconds": pause.cool_down_seconds, "consecutive": pause.consecutive}


async def serve(state: HealthState, metrics: Metrics, host: str, port: int,
                *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; reports the bound port through ``task_status``."""
    runner = web.AppRunner(build_app(state, metrics), access_log=None, handle_signals=False,
                           shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        logger.bind(event="health_listening", port=bound).info(f"health server on port {bound}")
        task_status.started(bound)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
