"""The health server (aiohttp on ``$PORT``): ``/health``, ``/ready`` and ``/metrics``.

It only renders: what the worker knows about itself is a
:class:`~realtime_worker.health_state.HealthState`.

Bodies are small JSON documents (Prometheus text for ``/metrics``); no secrets, prompts or
stack traces ever leave through it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from aiohttp import web
from anyio.abc import TaskStatus
from loguru import logger

from realtime_worker.errors import QueueError
from realtime_worker.health_state import HealthState
from realtime_worker.metrics import Metrics

if TYPE_CHECKING:
    from realtime_worker.pause import PauseStatus
    from realtime_worker.queue import QueueDepth

QueueDepthSource = Callable[[], Awaitable["QueueDepth"]]


def build_app(state: HealthState, metrics: Metrics,
              queue_depth: QueueDepthSource | None = None) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        ok = state.alive()
        return web.json_response({"status": "ok" if ok else "stalled", "mode": state.mode},
                                 status=200 if ok else 503)

    async def ready(_: web.Request) -> web.Response:
        readiness = await state.readiness()
        body = {"ready": readiness.ok, "mode": state.mode, "paused": state.paused,
                "config_pause": _pause_json(readiness.config_pause), "checks": readiness.checks}
        return web.json_response(body, status=200 if readiness.ok else 503)

    async def metrics_text(_: web.Request) -> web.Response:
        await _read_depth(queue_depth, metrics)
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_text)
    return app


def _pause_json(pause: PauseStatus | None) -> dict[str, Any] | None:
    if pause is None:
        return None
    return {"reason": pause.reason, "error_code": pause.error_code,
            "resumes_in_seconds": round(pause.resumes_in_seconds, 1),
            "cool_down_seconds": pause.cool_down_seconds, "consecutive": pause.consecutive}


async def _read_depth(queue_depth: QueueDepthSource | None, metrics: Metrics) -> None:
    """Fresh queue gauges for this scrape (one query, never on a timer); on a database error
    they keep their last values."""
    if queue_depth is None:
        return
    try:
        depth = await queue_depth()
    except QueueError as exc:  # a scrape must not fail because the database did
        logger.bind(event="queue_depth_failed").warning(f"queue depth not read: {exc}")
        return
    metrics.queue_due.set(depth.due)
    metrics.queue_oldest_age.set(depth.oldest_due_age_seconds)


async def serve(state: HealthState, metrics: Metrics, host: str, port: int,
                queue_depth: QueueDepthSource | None = None,
                *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; reports the bound port through ``task_status``."""
    runner = web.AppRunner(build_app(state, metrics, queue_depth), access_log=None, handle_signals=False,
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
