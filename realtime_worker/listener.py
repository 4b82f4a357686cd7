"""The Realtime listener: INSERTs on ``public.jobs`` turned into wake-ups, from one of two sources.

``postgres_changes`` (the default) subscribes to INSERT on ``public.jobs``. ``broadcast`` joins
the private channel ``worker:jobs`` that the Broadcast wake-up migration's trigger sends to
(``realtime.send``, one message per queued job); every (re)join asks the server to replay the
messages since the listener last knew it was receiving (``config.broadcast.replay``, at most 25),
and messages are told apart by their id (``meta.id``), so a replayed one wakes nothing twice.
The sweep stays the truth with either source: events are hints, and both sources lose some.

The callbacks only signal: they never await, never raise and do no I/O (a raising callback
would silently kill realtime-py's delivery). A supervisor watches the socket and the channel
and rebuilds client and channel with bounded, jittered backoff whenever the official client
cannot recover by itself: after it gave up reconnecting, after a server ``phx_close``, or when
the subscription stays broken. ``SUBSCRIBED`` only means the join was accepted; the listener
counts as subscribed once the server's "Subscribed to PostgreSQL" system message arrives, and
every such (re)subscription triggers a catch-up claim, because events in the gap are lost.

Each session has a generation number bound into its state and system callbacks, and callbacks of
an older generation are ignored: closing a session sends ``phx_leave``, whose push timeout later
reports ``CLOSED`` through that session's callback, long after the next session took over.
"""

from __future__ import annotations

import functools
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast
from uuid import UUID

import anyio
from loguru import logger

from realtime_worker.health_state import RealtimeLink
from realtime_worker.jobs_channel import (
    BROADCAST_TOPIC,
    REPLAY_LIMIT,
    broadcast_channel,
    jobs_client,
    jobs_inserts_channel,
)
from realtime_worker.metrics import Metrics
from realtime_worker.retry import Backoff, reconnect_delay

if TYPE_CHECKING:
    from realtime.types import ReplayOption
    from supabase.types import RealtimeClientOptions

Wake = Callable[[UUID | None, str], None]
Source = Literal["postgres_changes", "broadcast"]


@dataclass(frozen=True, kw_only=True)
class ListenerSettings:
    url: str
    key: str
    source: Source = "postgres_changes"
    channel: str = "jobs-worker"
    topic: str = BROADCAST_TOPIC
    # Replay from this long before the listener last knew it was receiving: a job's message is
    # stamped with its transaction's start (now()), which may precede the commit, and the two
    # clocks (database, worker) differ a little. Duplicates this brings back are dropped by id.
    replay_margin_seconds: float = 10.0
    seen_ids: int = 4096  # message ids remembered for dedupe
    rebuild_after_seconds: float = 10.0
    subscribe_timeout_seconds: float = 15.0
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    client_max_retries: int = 5
    client_initial_backoff_seconds: float = 1.0
    client_timeout_seconds: int = 10  # realtime-py's push (join, leave) and connect timeout


def reconnect_backoff(initial: float, cap: float) -> Backoff:
    """Full jitter: after ``n`` failed sessions, a delay over [0, min(cap, initial * 2**n)]."""
    return Backoff(base_seconds=initial / 2, cap_seconds=cap / 2, jitter=1.0)


def job_id_of(payload: Any) -> UUID | None:
    """The queued job an INSERT event announces, or None when the event names none."""
    record = payload["data"]["record"]
    if record.get("status", "queued") != "queued":
        return None
    return UUID(str(record["id"]))


def broadcast_job_id(message: Any) -> UUID | None:
    """The job a Broadcast message announces: ``{"job_id"}`` as our trigger sends it, or the row
    of a ``realtime.broadcast_changes`` trigger; None when it names none."""
    body = message["payload"]
    if "job_id" in body:
        return UUID(str(body["job_id"]))
    return job_id_of({"data": body})


class SeenIds:
    """The last ``size`` message ids, to drop a message delivered twice (live, then replayed)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def first_time(self, message_id: str) -> bool:
        if message_id in self._ids:
            return False
        self._ids[message_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return True


def _field(payload: Any, name: str) -> Any:
    if isinstance(payload, dict):
        return payload.get(name)
    return getattr(payload, name, None)


class Listener:
    def __init__(self, settings: ListenerSettings, wake: Wake, metrics: Metrics,
                 link: RealtimeLink, rng: random.Random | None = None) -> None:
        self._s, self._wake, self._metrics, self._link = settings, wake, metrics, link
        self._rng = rng or random.Random()
        self._backoff = reconnect_backoff(settings.backoff_initial_seconds,
                                          settings.backoff_max_seconds)
        self._changed = anyio.Event()
        self._db_subscribed = False
        self._closed = False
        self._generation = 0  # of the current session; callbacks of older ones are ignored
        self.subscriptions = 0
        self.duplicates = 0
        self._seen = SeenIds(settings.seen_ids)
        # The join payload holds this very dict (``broadcast_channel``): keeping ``since`` current
        # here is what makes each rejoin ask for the right replay.
        self._replay: ReplayOption = {"since": self._since_ms(), "limit": REPLAY_LIMIT}

    # -- callbacks: synchronous, never raise --------------------------------------------------
    # An insert is news whichever session brings it; state and system callbacks name theirs.

    def on_insert(self, payload: Any) -> None:
        try:
            self._metrics.events.inc()
            job_id = job_id_of(payload)
        except Exception:
            job_id = None  # a malformed event is still a hint that work may exist
        try:
            self._wake(job_id, "realtime" if job_id else "catchup")
        except Exception:
            logger.bind(event="wake_failed").exception("could not wake the dispatcher")

    def on_broadcast(self, message: Any) -> None:
        try:
            meta = message.get("meta") or {}
            if meta.get("id") is not None and not self._seen.first_time(str(meta["id"])):
                self.duplicates += 1
                return
            self._metrics.events.inc()
            job_id = broadcast_job_id(message)
        except Exception:
            job_id, meta = None, {}
        try:
            self._wake(job_id, ("replay" if meta.get("replayed") else "realtime") if job_id else "catchup")
        except Exception:
            logger.bind(event="wake_failed").exception("could not wake the dispatcher")

    def on_system(self, generation: int, payload: Any) -> None:
        if generation != self._generation:
            return
        try:
            if _field(payload, "extension") == "postgres_changes":
                self._db_subscribed = _field(payload, "status") == "ok"
                if not self._db_subscribed:
                    logger.bind(event="realtime_system_error").warning(
                        str(_field(payload, "message")))
            self._changed.set()
        except Exception:
            logger.bind(event="callback_failed").exception("system callback failed")

    def on_state(self, generation: int, state: Any, error: Exception | None = None) -> None:
        if generation != self._generation:
            return  # e.g. the CLOSED of an older session's phx_leave timing out
        try:
            name = str(getattr(state, "value", state))
            # postgres_changes: SUBSCRIBED precedes the database subscription (a system message
            # follows); a Broadcast channel receives as soon as the join is accepted.
            self._db_subscribed = self._s.source == "broadcast" and name == "SUBSCRIBED"
            self._closed = self._closed or name == "CLOSED"
            logger.bind(event="realtime_state", state=name).info(
                f"channel {name}" + (f": {error}" if error else ""))
            self._changed.set()
        except Exception:
            logger.bind(event="callback_failed").exception("state callback failed")

    # -- supervisor -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep a live subscription until cancelled."""
        failures = 0
        while True:
            worked = await self._session()
            failures = 0 if worked else failures + 1
            delay = reconnect_delay(failures, self._backoff, self._rng)
            self._metrics.resubscribes.inc()
            logger.bind(event="realtime_rebuild", failures=failures, delay_s=round(delay, 2)).warning(
                "rebuilding the Realtime client")
            await anyio.sleep(delay)

    async def _session(self) -> bool:
        """One client + channel, watched until broken for good; True if it ever subscribed."""
        self._generation += 1
        self._db_subscribed, self._closed = False, False
        on_system = functools.partial(self.on_system, self._generation)
        try:
            async with jobs_client(self._s.url, self._s.key, self._client_options()) as client:
                channel = self._channel(client)
                channel.on_system(on_system)
                try:
                    with anyio.move_on_after(self._s.subscribe_timeout_seconds):
                        await channel.subscribe(functools.partial(self.on_state, self._generation))
                    return await self._watch(client, channel)
                finally:
                    self._set_subscribed(False)
        except Exception as exc:
            logger.bind(event="realtime_error").warning(f"{type(exc).__name__}: {exc}")
            return False

    def _channel(self, client: Any) -> Any:
        if self._s.source == "broadcast":
            return broadcast_channel(client, self._s.topic, self._replay, self.on_broadcast)
        return jobs_inserts_channel(client, self._s.channel, self.on_insert)

    def _since_ms(self) -> int:
        return int((time.time() - self._s.replay_margin_seconds) * 1000)

    def _client_options(self) -> RealtimeClientOptions:
        # AsyncRealtimeClient takes ``timeout``; supabase passes it on but its TypedDict omits it.
        return cast("RealtimeClientOptions", {
            "max_retries": self._s.client_max_retries,
            "initial_backoff": self._s.client_initial_backoff_seconds,
            "timeout": self._s.client_timeout_seconds,
        })

    async def _watch(self, client: Any, channel: Any) -> bool:
        worked, broken_since = False, None
        while True:
            healthy = bool(_listening(client) and channel.is_joined and self._db_subscribed)
            if healthy and not self._link.subscribed:
                worked = True
                self.subscriptions += 1
                self._set_subscribed(True)
                self._wake(None, "catchup")
            if healthy:
                broken_since = None
                self._replay["since"] = self._since_ms()
            else:
                self._set_subscribed(False)
                broken_since = broken_since or time.monotonic()
                if self._closed or _dead(client) or (
                        time.monotonic() - broken_since > self._s.rebuild_after_seconds):
                    return worked
            self._changed = anyio.Event()
            with anyio.move_on_after(0.5):
                await self._changed.wait()

    def _set_subscribed(self, value: bool) -> None:
        if self._link.subscribed != value:
            logger.bind(event="realtime_subscribed" if value else "realtime_disconnected").info(
                "subscribed to jobs inserts" if value else "not subscribed")
        self._link.subscribed = value
        self._metrics.realtime_connected.set(1 if value else 0)


def _listen_task(client: Any) -> Any:
    return getattr(client.realtime, "_listen_task", None)


def _listening(client: Any) -> bool:
    task = _listen_task(client)
    return bool(client.realtime.is_connected and task is not None and not task.done())


def _dead(client: Any) -> bool:
    """realtime-py's listen task is over: it gave up reconnecting (after max_retries) or crashed.

    It runs reconnects itself, so while it lives the client may still recover on its own.
    """
    task = _listen_task(client)
    return task is not None and task.done()

