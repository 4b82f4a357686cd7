"""The Realtime line of ``realtime-worker check``: what the worker's listener will really use.

``postgres_changes`` (the default): a channel on ``public.jobs`` inserts, and the server's
"Subscribed to PostgreSQL" system message, not just the join. ``WAKEUP_SOURCE=broadcast``: the
Broadcast migration 0020 is applied (``worker_broadcast_topic``, an RPC only it provides), then
the listener's own private join of ``worker:jobs`` (``jobs_channel.broadcast_channel``) with the
service-role key, which the server accepts only when its RLS check on ``realtime.messages`` lets
that role read the topic.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import httpx
from postgrest.exceptions import APIError
from supabase import AsyncClient
from supabase.types import RealtimeClientOptions

from realtime_worker.check_outcome import (
    KEY_FIX,
    MIGRATION_FIX,
    MISSING_FUNCTION_CODES,
    URL_FIX,
    Outcome,
    failed,
    passed,
    rest_error,
    unreachable,
)
from realtime_worker.config import WorkerSettings
from realtime_worker.jobs_channel import (
    BROADCAST_TOPIC,
    REPLAY_LIMIT,
    broadcast_channel,
    jobs_client,
    jobs_inserts,
)

CHANNEL = "realtime-worker-check"
SUBSCRIBED = "Subscribed to PostgreSQL"
BROADCAST_RPC = "worker_broadcast_topic"
CLIENT_OPTIONS: RealtimeClientOptions = {"max_retries": 1, "initial_backoff": 0.2}
BROADCAST_FIX = ("run `realtime-worker migrate --wakeup broadcast`"
                 " or apply `realtime-worker sql --wakeup broadcast`")
POLICY_FIX = ("let service_role read the topic in realtime.messages: restore migration 0020's RLS"
              " policy worker_jobs_topic_service_role (`realtime-worker migrate --wakeup broadcast"
              " --force`) and service_role's SELECT grant on realtime.messages")
REALTIME_FIX = "check SUPABASE_URL, the key and Realtime settings"
SLOW_FIX = "check SUPABASE_URL, the network and that Realtime is enabled for the project"


def slow(settings: WorkerSettings) -> tuple[str, str]:
    """What a Realtime check that took too long never got, and the fix."""
    if settings.wakeup_source == "broadcast":
        return "no answer to the private join", SLOW_FIX
    return f"no '{SUBSCRIBED}' system message", SLOW_FIX


# --- postgres_changes ------------------------------------------------------------------------


def field(payload: Any, name: str) -> Any:
    """A field of a system payload (a dict or an object, depending on the client version)."""
    return payload.get(name) if isinstance(payload, dict) else getattr(payload, name, None)


class Subscription:
    """Collects what the channel reports: the database subscription's system message or an error."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.outcome: Outcome | None = None

    def _finish(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.done.set()

    def on_system(self, payload: Any) -> None:
        extension, status, message = (field(payload, name) for name in ("extension", "status", "message"))
        if extension not in ("postgres_changes", "system"):
            return
        if status == "ok":
            self._finish(passed("Realtime", f"subscribed to public.jobs inserts ({message})"))
        else:
            self._finish(failed("Realtime", f"subscription refused: {message}",
                                "add public.jobs to the supabase_realtime publication: " + MIGRATION_FIX))

    def on_state(self, state: Any, error: Exception | None = None) -> None:
        name = str(getattr(state, "value", state))
        system = system_error(error)
        if system is not None:  # realtime-py reports an error system message as CHANNEL_ERROR
            self.on_system(system)
        elif name != "SUBSCRIBED":
            detail = f"channel {name}" + (f": {error}" if error else "")
            self._finish(failed("Realtime", detail, REALTIME_FIX))


def error_payload(error: Exception | None) -> dict[str, Any] | None:
    """The server's JSON that realtime-py puts in a channel error (a system message, a refused
    join's reply), when there is one."""
    try:
        payload = json.loads(str(error)) if error is not None else None
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def system_error(error: Exception | None) -> dict[str, Any] | None:
    """The system message inside a CHANNEL_ERROR."""
    payload = error_payload(error)
    return payload if payload is not None and "extension" in payload else None


def realtime_error(exc: Exception) -> Outcome:
    text = str(exc)
    if any(code in text for code in ("HTTP 401", "HTTP 403")):
        return failed("Realtime", f"SUPABASE_SERVICE_ROLE_KEY rejected ({text})", KEY_FIX)
    if isinstance(exc, OSError):
        return unreachable("Realtime", exc)
    return failed("Realtime", f"{type(exc).__name__}: {text}", URL_FIX)


async def check(settings: WorkerSettings, client: AsyncClient) -> Outcome:
    """What the worker's listener will use: Broadcast, or ``postgres_changes`` on ``public.jobs``."""
    if settings.worker_mode == "poll":
        return passed("Realtime", "not used (WORKER_MODE=poll)")
    if settings.wakeup_source == "broadcast":
        return await check_broadcast(settings, client)
    return await check_inserts(settings)


async def check_inserts(settings: WorkerSettings) -> Outcome:
    """Join a channel on ``public.jobs`` inserts with the official client and wait for the database."""
    subscription = Subscription()
    try:
        async with jobs_inserts(settings.supabase_url,
                                settings.supabase_service_role_key.get_secret_value(), CHANNEL,
                                CLIENT_OPTIONS, lambda _payload: None,
                                subscription.on_system) as (_client, channel):
            await channel.subscribe(subscription.on_state)
            await subscription.done.wait()
    except Exception as exc:
        return realtime_error(exc)
    assert subscription.outcome is not None
    return subscription.outcome


# --- Broadcast -------------------------------------------------------------------------------


class PrivateJoin(Subscription):
    """The server's answer to a private join: a Broadcast channel receives once it is accepted."""

    def on_state(self, state: Any, error: Exception | None = None) -> None:
        name, reason = str(getattr(state, "value", state)), join_refusal(error)
        if name == "SUBSCRIBED":
            self._finish(passed("Realtime", f"private channel {BROADCAST_TOPIC} joined with the"
                                            " service-role key (Broadcast wake-ups, migration 0020)"))
        elif reason is not None:
            fix = POLICY_FIX if reason.startswith("Unauthorized") else REALTIME_FIX
            self._finish(failed("Realtime", f"private join of {BROADCAST_TOPIC} refused: {reason}", fix))
        else:
            self._finish(failed("Realtime", f"channel {name}" + (f": {error}" if error else ""),
                                REALTIME_FIX))


def join_refusal(error: Exception | None) -> str | None:
    """The server's reason inside a refused join."""
    payload = error_payload(error)
    return str(payload["reason"]) if payload is not None and "reason" in payload else None


async def broadcast_migration(client: AsyncClient) -> Outcome | None:
    """None when migration 0020 is applied and sends to the listener's topic; else the ✗."""
    try:
        topic = (await client.rpc(BROADCAST_RPC, {}).execute()).data
    except APIError as exc:
        if str(exc.code or "") not in MISSING_FUNCTION_CODES:
            return rest_error(exc, "Realtime", BROADCAST_RPC)
        return failed("Realtime", "WAKEUP_SOURCE=broadcast, but the Broadcast wake-up's migration is"
                                  f" not applied ({BROADCAST_RPC} not found)", BROADCAST_FIX)
    except (httpx.TransportError, OSError) as exc:
        return unreachable("Realtime", exc)
    if topic != BROADCAST_TOPIC:
        return failed("Realtime", f"the Broadcast migration sends to {topic!r}, the worker listens on"
                                  f" {BROADCAST_TOPIC!r}", BROADCAST_FIX)
    return None


async def check_broadcast(settings: WorkerSettings, client: AsyncClient) -> Outcome:
    """Migration 0020 is there, and the server accepts the listener's private join."""
    missing = await broadcast_migration(client)
    if missing is not None:
        return missing
    join = PrivateJoin()
    try:
        async with jobs_client(settings.supabase_url, settings.supabase_service_role_key.get_secret_value(),
                               CLIENT_OPTIONS) as realtime:
            channel = broadcast_channel(realtime, BROADCAST_TOPIC,
                                        {"since": int(time.time() * 1000), "limit": REPLAY_LIMIT},
                                        lambda _message: None)
            await channel.subscribe(join.on_state)
            await join.done.wait()
    except Exception as exc:
        return realtime_error(exc)
    assert join.outcome is not None
    return join.outcome

