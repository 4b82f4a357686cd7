"""Assembles a running worker: health server, Supabase client, dispatcher, sweeper, listener.

Everything long-running lives in one task group, so one crash stops all of it. SIGTERM/SIGINT
stop claiming and listening, give in-flight jobs the grace period and release the rest; a
second signal cancels everything at once.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import TaskStatus
from loguru import logger

from realtime_worker import early_signals, health, sweeper
from realtime_worker.budget import PrepaidGrants, SupabaseBudget, budget_settings
from realtime_worker.budget_claims import BudgetedClaims
from realtime_worker.config import WorkerSettings
from realtime_worker.dispatcher import Dispatcher, DispatcherSettings
from realtime_worker.errors import ConfigError, QueueError
from realtime_worker.health_state import DatabaseProbe, HealthState
from realtime_worker.listener import Listener, ListenerSettings
from realtime_worker.metrics import Metrics
from realtime_worker.pause import PauseSettings, PauseStatus
from realtime_worker.queue import QueueDepth, RpcCall, SupabaseQueue
from realtime_worker.run import Processor

if TYPE_CHECKING:
    from supabase import AsyncClient

    from realtime_worker.rpc import PostgrestRpc

# Imported in a thread once the health server is up (they take seconds on a small machine).
HEAVY_MODULES = ("httpx", "aiohttp", "supabase", "realtime", "postgrest", "realtime_worker.transport",
                 "realtime_worker.rpc")


# The longest one REST or Storage call may take, whole (each read has 30 s besides): inputs and
# outputs are a few MB at most, RPC answers a few KB.
HTTP_TOTAL_SECONDS = 60.0

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
    """What a processor factory may use: settings, the shared Supabase client, metrics, and the
    queue's RPC adapter (for the other ``worker_*`` functions, such as the Gemini budget's)."""

    settings: WorkerSettings
    supabase: AsyncClient
    metrics: Metrics
    rpc: RpcCall | None = None
    prepaid: PrepaidGrants | None = None  # grants claimed with their jobs (GEMINI_RPM)


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


async def load_in_background(factory: ProcessorFactory | str) -> ProcessorFactory:
    """:func:`_load` in a daemon thread, awaited until cancelled.

    The imports take seconds on a small machine and cannot be interrupted; a stop during them
    must not wait for them, so the thread is a daemon (not one of anyio's, which the interpreter
    joins at exit) and a cancelled wait simply leaves it behind.
    """
    done, outcome = anyio.Event(), Outcome()
    token = anyio.lowlevel.current_token()

    def work() -> None:
        try:
            outcome.value = _load(factory)
        except BaseException as exc:  # handed to the waiting task, not lost
            outcome.error = exc
        with contextlib.suppress(anyio.RunFinishedError):
            anyio.from_thread.run_sync(done.set, token=token)

    threading.Thread(target=work, name="start-up imports", daemon=True).start()
    await done.wait()
    if outcome.error is not None:
        raise outcome.error
    assert outcome.value is not None
    return outcome.value


@dataclass
class Outcome:
    value: ProcessorFactory | None = None
    error: BaseException | None = None


@asynccontextmanager
async def supabase_client(settings: WorkerSettings) -> AsyncIterator[AsyncClient]:
    """The one Supabase client for REST and Storage, with an HTTP pool we close ourselves."""
    from supabase import AsyncClientOptions, acreate_client

    from realtime_worker import transport

    http = transport.client(timeout=30.0, connect_timeout=5.0, max_connections=64,
                            total_timeout=HTTP_TOTAL_SECONDS)
    try:
        options = AsyncClientOptions(httpx_client=http, postgrest_client_timeout=30)
        yield await acreate_client(settings.supabase_url,
                                   settings.supabase_service_role_key.get_secret_value(), options)
    finally:
        with anyio.CancelScope(shield=True):
            await http.aclose()


def queue_rpc(settings: WorkerSettings) -> AbstractAsyncContextManager[PostgrestRpc]:
    """The queue's RPC client (plain aiohttp POSTs, its own connection pool)."""
    from realtime_worker import rpc

    return rpc.open_rpc(settings.supabase_url, settings.supabase_service_role_key.get_secret_value(),
                        read_timeout=30.0, connect_timeout=5.0, total_timeout=HTTP_TOTAL_SECONDS)


class Worker:
    def __init__(self, settings: WorkerSettings, factory: ProcessorFactory | str, *,
                 metrics: Metrics | None = None, listener: ListenerSettings | None = None,
                 config_pause: PauseSettings | None = None, owns_process: bool = False) -> None:
        self.settings = settings
        self._config_pause = config_pause or PauseSettings(
            initial_seconds=settings.config_pause_seconds)
        self._owns_process = owns_process
        self.metrics = metrics or Metrics()
        self._factory = factory
        self._listener_settings = listener
        self._stop = anyio.Event()
        self._starting: anyio.CancelScope | None = None  # while the client libraries load
        self._signals = 0
        self.dispatcher: Dispatcher | None = None
        self._queue: SupabaseQueue | None = None
        self.health = HealthState(
            mode="paused" if settings.pause_worker else settings.worker_mode,
            database=DatabaseProbe(self._ping), last_tick=self._last_tick,
            config_pause=self._config_pause_status,
            realtime_required=settings.worker_mode == "realtime" and not settings.pause_worker,
            paused=settings.pause_worker,
            stale_after_seconds=max(60.0, 3 * settings.idle_interval_seconds),
        )

    # -- the health state's sources: parts that do not exist yet answer "nothing yet" --

    def _last_tick(self) -> float:
        """When the main loop last turned; while there is none (start-up, paused), now."""
        return self.dispatcher.last_tick if self.dispatcher else time.monotonic()

    def _config_pause_status(self) -> PauseStatus | None:
        return self.dispatcher.pause_status() if self.dispatcher else None

    async def _queue_depth(self) -> QueueDepth:
        """The queue's depth for a scrape of ``/metrics`` (one query; none before the queue)."""
        if self._queue is None:
            raise QueueError("the queue is not connected yet")
        return await self._queue.depth()

    async def _ping(self) -> None:
        if self._queue is None:
            raise ConnectionError("no database client yet")
        await self._queue.reap_expired(0)

    def request_stop(self) -> None:
        """Begin a graceful shutdown (what the first SIGTERM does); during start-up, end it."""
        self._stop.set()
        if self._starting is not None:
            self._starting.cancel()

    async def run(self, *, once: bool = False, host: str = "0.0.0.0",
                  install_signals: bool = True,
                  task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            if install_signals:  # first: a SIGTERM during start-up is a graceful stop too
                tg.start_soon(self._watch_signals, tg.cancel_scope)
            port = await tg.start(health.serve, self.health, self.metrics, host, self.settings.port,
                                  self._queue_depth)
            task_status.started(port)
            await self._main(once)
            tg.cancel_scope.cancel()
        logger.bind(event="worker_stopped").info("worker stopped")

    async def _main(self, once: bool) -> None:
        log = logger.bind(event="worker_starting", worker=self.settings.worker_id,
                          mode=self.health.mode, max_concurrent_jobs=self.settings.max_concurrent_jobs)
        log.info("worker starting")
        factory = await self._load_unless_stopped()
        if factory is None:  # stopped while loading: nothing was claimed, nothing to give back
            logger.bind(event="worker_stopped_starting").info("stopped during start-up")
            return
        if self._owns_process:
            settle_heap()
        async with supabase_client(self.settings) as client, queue_rpc(self.settings) as rpc:
            queue = SupabaseQueue(rpc, self.metrics, self.health.database.mark_ok)
            self._queue = queue
            await self._check_wakeup_source(rpc)
            if self.settings.pause_worker:
                await self._paused()
                return
            claims = self._claims(queue)
            context = WorkerContext(self.settings, client, self.metrics, rpc,
                                    claims.prepaid if claims is not None else None)
            async with factory(context) as processor:
                self.dispatcher = Dispatcher(claims or queue, processor,
                                             self._dispatcher_settings(), self.metrics)
                if claims is not None:
                    claims.on_room = self.dispatcher.wake_in
                if once:
                    await self._drain(queue, self.dispatcher)
                else:
                    await self._serve(queue, self.dispatcher)

    def _claims(self, queue: SupabaseQueue) -> BudgetedClaims | None:
        """With GEMINI_RPM, claims that take their Gemini grant with them (docs/scaling.md)."""
        s = self.settings
        if s.gemini_rpm <= 0:
            return None
        return BudgetedClaims(queue, SupabaseBudget(queue.call), budget_settings(s),
                              s.gemini_claim_ahead_seconds, PrepaidGrants())

    async def _load_unless_stopped(self) -> ProcessorFactory | None:
        """The processor factory, or None when a stop comes first (before or while loading)."""
        try:
            with anyio.CancelScope() as self._starting:
                if not self._stop.is_set():
                    return await load_in_background(self._factory)
            return None
        finally:
            self._starting = None

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
            self.health.realtime.subscribed = False
            await dispatcher.shutdown()

    async def _feed(self, queue: SupabaseQueue, dispatcher: Dispatcher,
                    scope: anyio.CancelScope) -> None:
        with scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sweeper.run_sweeper, queue, dispatcher.wake, self.metrics,
                              self.settings.idle_interval_seconds)
                if self.settings.worker_mode == "realtime":
                    listener = Listener(self._listener_config(), dispatcher.wake, self.metrics,
                                        self.health.realtime)
                    tg.start_soon(listener.run)

    async def _check_wakeup_source(self, rpc: PostgrestRpc) -> None:
        """With ``WAKEUP_SOURCE=broadcast``, stop at once if the migration that sends the messages
        is missing: the private join would succeed and every pickup silently wait for the sweep."""
        s = self.settings
        if s.worker_mode != "realtime" or s.wakeup_source != "broadcast" or s.pause_worker:
            return
        import httpx
        from postgrest.exceptions import APIError

        try:
            await rpc("worker_broadcast_topic", {})
        except APIError as exc:
            if exc.code == "PGRST202":
                raise ConfigError(
                    "configuration error: WAKEUP_SOURCE=broadcast, but the Broadcast wake-up's"
                    " migration is missing: run `realtime-worker migrate --wakeup broadcast`"
                    " (or apply `realtime-worker sql --wakeup broadcast`)") from None
            logger.bind(event="wakeup_check_failed").warning(f"{exc.code} {exc.message}")
        except httpx.HTTPError as exc:  # unreachable for now: the sweep and the listener retry
            logger.bind(event="wakeup_check_failed").warning(f"{type(exc).__name__}: {exc}")

    def _listener_config(self) -> ListenerSettings:
        if self._listener_settings is not None:
            return self._listener_settings
        return ListenerSettings(url=self.settings.supabase_url,
                                key=self.settings.supabase_service_role_key.get_secret_value(),
                                source=self.settings.wakeup_source)

    def _dispatcher_settings(self) -> DispatcherSettings:
        s = self.settings
        return DispatcherSettings(worker_id=s.worker_id, max_concurrent_jobs=s.max_concurrent_jobs,
                                  lease_seconds=s.lease_seconds,
                                  shutdown_grace_seconds=s.shutdown_grace_seconds,
                                  job_timeout_seconds=s.job_timeout_seconds,
                                  config_pause=self._config_pause)

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            for signum in early_signals.take():  # came during start-up, before this receiver
                self._on_signal(signum, scope)
            async for signum in signals:
                self._on_signal(signum, scope)

    def _on_signal(self, signum: int, scope: anyio.CancelScope) -> None:
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



