"""Assembles a running worker: health server, Supabase client, dispatcher, sweeper, listener.

Everything long-running lives in one task group, so one crash stops all of it. SIGTERM/SIGINT
stop claiming and listening, give in-flight jobs the grace period and release the rest; a
second signal cancels everything at once.
"""

from __future__ import annotations

import gc
import importlib
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus
from loguru import logger

from realtime_worker import health, sweeper
from realtime_worker.config import WorkerSettings
from realtime_worker.dispatcher import Dispatcher, DispatcherSettings, Processor
from realtime_worker.errors import ConfigError
from realtime_worker.listener import Listener, ListenerSettings
from realtime_worker.metrics import Metrics
from realtime_worker.pause import PauseSettings
from realtime_worker.queue import SupabaseQueue

if TYPE_CHECKING:
    from supabase import AsyncClient

# Imported in a thread once the health server is up (they take seconds on a small machine).
HEAVY_MODULES = ("httpx", "aiohttp", "supabase", "realtime", "postgrest", "realtime_worker.transport")


# Young-generation threshold once start-up is over (CPython's default is 700 allocations).
GC_YOUNG_THRESHOLD = 50_000


def settle_heap() -> None:
    """Start-up is over: freeze what the imports built and collect the young generation less often.

    Everything alive now (modules, the client libraries' classes and tables) lives as long as
    the process; ``gc.freeze`` takes it out of every later collection. Each request through
    supabase-py and httpx allocates thousands of short-lived containers, so the default
    threshold ran a collection every request or two, on the pickup path; refcounting still frees
    everything acyclic at once. Only for a process that is the worker (``realtime-worker run``),
    not for one that embeds it.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
    logger.bind(event="heap_settled", frozen_objects=gc.get_freeze_count(),
                gc_threshold=list(gc.get_threshold())).info("start-up heap frozen")


@dataclass(frozen=True)
class WorkerContext:
    """What a processor factory may use: settings, the shared Supabase client, metrics."""

    settings: WorkerSettings
    supabase: AsyncClient
    metrics: Metrics


ProcessorFactory = Callable[[WorkerContext], AbstractAsyncContextManager[Processor]]


def load_factory(path: str) -> ProcessorFactory:
    """Import ``module:attribute`` (the processor factory the worker runs)."""
    module_name, _, attribute = path.partition(":")
    try:
        factory: ProcessorFactory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--processor {path!r} cannot be imported: {exc}") from exc
    return factory


def _load(factory: ProcessorFactory | str) -> ProcessorFactory:
    for module in HEAVY_MODULES:
        importlib.import_module(module)
    return load_factory(factory) if isinstance(factory, str) else factory


@asynccontextmanager
async def supabase_client(settings: WorkerSettings) -> AsyncIterator[AsyncClient]:
    """The one Supabase client for REST and Storage, with an HTTP pool we close ourselves."""
    from supabase import AsyncClientOptions, acreate_client

    from realtime_worker import transport

    http = transport.client(timeout=30.0, connect_timeout=5.0, max_connections=64)
    try:
        options = AsyncClientOptions(httpx_client=http, postgrest_client_timeout=30)
        yield await acreate_client(settings.supabase_url,
                                   settings.supabase_service_role_key.get_secret_value(), options)
    finally:
        with anyio.CancelScope(shield=True):
            await http.aclose()


class Worker:
    def __init__(self, settings: WorkerSettings, factory: ProcessorFactory | str, *,
                 metrics: Metrics | None = None, listener: ListenerSettings | None = None,
                 config_pause: PauseSettings | None = None, owns_process: bool = False) -> None:
        self.settings = settings
        self._config_pause = config_pause or PauseSettings()
        self._owns_process = owns_process
        self.metrics = metrics or Metrics()
        self._factory = factory
        self._listener_settings = listener
        self._stop = anyio.Event()
        self._signals = 0
        self.dispatcher: Dispatcher | None = None
        self.health = health.HealthState(
            mode="paused" if settings.pause_worker else settings.worker_mode,
            realtime_required=settings.worker_mode == "realtime" and not settings.pause_worker,
            paused=settings.pause_worker,
            stale_after_seconds=max(60.0, 3 * settings.idle_interval_seconds),
        )

    def request_stop(self) -> None:
        """Begin a graceful shutdown (what the first SIGTERM does)."""
        self._stop.set()

    async def run(self, *, once: bool = False, host: str = "0.0.0.0",
                  install_signals: bool = True,
                  task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            if install_signals:  # first: a SIGTERM during start-up is a graceful stop too
                tg.start_soon(self._watch_signals, tg.cancel_scope)
            port = await tg.start(health.serve, self.health, self.metrics, host, self.settings.port)
            task_status.started(port)
            await self._main(once)
            tg.cancel_scope.cancel()
        logger.bind(event="worker_stopped").info("worker stopped")

    async def _main(self, once: bool) -> None:
        log = logger.bind(event="worker_starting", worker=self.settings.worker_id,
                          mode=self.health.mode, max_concurrent_jobs=self.settings.max_concurrent_jobs)
        log.info("worker starting")
        factory = await anyio.to_thread.run_sync(_load, self._factory)
        if self._owns_process:
            settle_heap()
        async with supabase_client(self.settings) as client:
            queue = SupabaseQueue.from_client(client, self.metrics, self.health.mark_database_ok)
            self.health.database_check = lambda: _ping(queue)
            self.health.queue_depth = queue.depth
            if self.settings.pause_worker:
                await self._paused()
                return
            context = WorkerContext(self.settings, client, self.metrics)
            async with factory(context) as processor:
                self.dispatcher = Dispatcher(queue, processor, self._dispatcher_settings(),
                                             self.metrics)
                self.health.tick = lambda: self.dispatcher.last_tick if self.dispatcher else 0.0
                self.health.config_pause = self.dispatcher.pause_status
                if once:
                    await self._drain(queue, self.dispatcher)
                else:
                    await self._serve(queue, self.dispatcher)

    async def _drain(self, queue: SupabaseQueue, dispatcher: Dispatcher) -> None:
        await sweeper.sweep_once(queue, lambda *_: None, self.metrics)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._shutdown_on_stop, dispatcher)
            await dispatcher.drain()
            tg.cancel_scope.cancel()

    async def _shutdown_on_stop(self, dispatcher: Dispatcher) -> None:
        await self._stop.wait()
        await dispatcher.shutdown()

    async def _paused(self) -> None:
        logger.bind(event="worker_paused").warning("PAUSE_WORKER is set: health server only, no claims")
        self.health.tick = time.monotonic
        await self._stop.wait()

    async def _serve(self, queue: SupabaseQueue, dispatcher: Dispatcher) -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run)
            feeders = anyio.CancelScope()
            tg.start_soon(self._feed, queue, dispatcher, feeders)
            await self._stop.wait()
            logger.bind(event="worker_stopping", in_flight=dispatcher.in_flight).info(
                "stopping: no new claims; in-flight jobs get the grace period")
            feeders.cancel()
            self.health.realtime_subscribed = False
            await dispatcher.shutdown()

    async def _feed(self, queue: SupabaseQueue, dispatcher: Dispatcher,
                    scope: anyio.CancelScope) -> None:
        with scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sweeper.run_sweeper, queue, dispatcher.wake, self.metrics,
                              self.settings.idle_interval_seconds)
                if self.settings.worker_mode == "realtime":
                    listener = Listener(self._listener_config(), dispatcher.wake, self.metrics,
                                        self.health)
                    tg.start_soon(listener.run)

    def _listener_config(self) -> ListenerSettings:
        if self._listener_settings is not None:
            return self._listener_settings
        return ListenerSettings(url=self.settings.supabase_url,
                                key=self.settings.supabase_service_role_key.get_secret_value())

    def _dispatcher_settings(self) -> DispatcherSettings:
        s = self.settings
        return DispatcherSettings(worker_id=s.worker_id, max_concurrent_jobs=s.max_concurrent_jobs,
                                  lease_seconds=s.lease_seconds,
                                  shutdown_grace_seconds=s.shutdown_grace_seconds,
                                  config_pause=self._config_pause)

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self._signals += 1
                name = signal.Signals(signum).name
                if self._signals == 1:
                    logger.bind(event="signal_received", signal=name).info(
                        f"{name}: shutting down gracefully")
                    self.request_stop()
                else:
                    logger.bind(event="signal_received", signal=name).warning(
                        f"second {name}: exiting now")
                    scope.cancel()


async def _ping(queue: SupabaseQueue) -> None:
    await queue.reap_expired(0)
