"""``realtime-worker check``: is this configuration ready to run a worker?

One line per item, ✓ or ✗ with the fix: the configuration; Supabase REST with the migration
(``worker_reap_expired(0)``, an RPC only the migration provides, with the service-role key);
the Storage buckets; the Realtime subscription to ``public.jobs`` (the server's
"Subscribed to PostgreSQL" system message, not just the join); Gemini (key accepted, model
available). Every check has its own time limit and they run side by side. The exit code is 0
only when every line is ✓. Secrets are never printed: every line goes through the redactor
the logs use.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from postgrest.exceptions import APIError
from storage3.exceptions import StorageApiError
from supabase import AsyncClient

from realtime_worker import config, logs, paths
from realtime_worker.config import WorkerSettings
from realtime_worker.console import say
from realtime_worker.errors import ConfigError, ConfigurationJobError, JobError
from realtime_worker.jobs_channel import jobs_inserts
from realtime_worker.worker import supabase_client

DEFAULT_TIMEOUT_SECONDS = 10.0
CHANNEL = "realtime-worker-check"
SUBSCRIBED = "Subscribed to PostgreSQL"
PROBE_RPC = "worker_reap_expired"
MIGRATION_FIX = "run `realtime-worker migrate` or apply `realtime-worker sql`"
KEY_FIX = "set SUPABASE_SERVICE_ROLE_KEY to the project's service_role key (Project Settings → API)"
GEMINI_NETWORK_FIX = "check the network (and GEMINI_BASE_URL, which is normally unset)"
URL_FIX = "check SUPABASE_URL (https://<project-ref>.supabase.co) and the network"
_KEY_CODES = frozenset({"PGRST301", "PGRST302", "PGRST303", "401"})
_MISSING_FUNCTION_CODES = frozenset({"PGRST202", "42883"})


@dataclass(frozen=True)
class Outcome:
    """One checked item: ✓ with what was found, or ✗ with what is wrong and the fix."""

    item: str
    ok: bool
    detail: str
    fix: str | None = None

    def line(self) -> str:
        text = f"{'✓' if self.ok else '✗'} {self.item}: {self.detail}"
        return f"{text} — fix: {self.fix}" if self.fix else text


def passed(item: str, detail: str) -> Outcome:
    return Outcome(item, True, detail)


def failed(item: str, detail: str, fix: str) -> Outcome:
    return Outcome(item, False, detail, fix)


def unreachable(item: str, exc: BaseException) -> Outcome:
    return failed(item, f"SUPABASE_URL unreachable ({type(exc).__name__})", URL_FIX)


# --- configuration ---------------------------------------------------------------------------


def load_settings(**overrides: Any) -> tuple[WorkerSettings | None, Outcome]:
    """The worker's settings, or None and the ✗ naming the bad variables."""
    try:
        settings = config.load(WorkerSettings, **overrides)
    except ConfigError as exc:
        problem = str(exc).removeprefix("configuration error: ")
        return None, failed("configuration", problem, "set it in the environment or .env (see .env.example)")
    return settings, passed("configuration", f"valid (SUPABASE_URL {settings.supabase_url},"
                                              f" {settings.worker_mode} mode, model {settings.gemini_model})")


# --- Supabase REST and the migration ---------------------------------------------------------


def rest_error(exc: APIError) -> Outcome:
    item, code, message = "Supabase REST", str(exc.code or ""), str(exc.message or "")
    if code in _MISSING_FUNCTION_CODES:
        return failed(item, f"migration not applied ({PROBE_RPC} not found)", MIGRATION_FIX)
    if code in _KEY_CODES or message.startswith(("Invalid API key", "No API key")):
        return failed(item, f"SUPABASE_SERVICE_ROLE_KEY rejected ({message or code})", KEY_FIX)
    if code == "42501":
        return failed(item, f"SUPABASE_SERVICE_ROLE_KEY may not call {PROBE_RPC} (permission denied):"
                            " it is not the service_role key", KEY_FIX)
    if code == "404":
        return failed(item, f"no {PROBE_RPC} at SUPABASE_URL/rest/v1 (HTTP 404)",
                      f"check SUPABASE_URL; if it is right, {MIGRATION_FIX}")
    return failed(item, f"error {code}: {message}", "see the Supabase project's API logs")


async def check_rest(client: AsyncClient) -> Outcome:
    """An RPC only the migration provides, with the service-role key: URL, key and migration."""
    try:
        await client.rpc(PROBE_RPC, {"p_limit": 0}).execute()
    except APIError as exc:
        return rest_error(exc)
    except (httpx.TransportError, OSError) as exc:
        return unreachable("Supabase REST", exc)
    return passed("Supabase REST", f"reachable, service-role key accepted, migration applied ({PROBE_RPC})")


# --- Storage ---------------------------------------------------------------------------------


def storage_error(exc: StorageApiError) -> Outcome:
    item, status = "Storage buckets", str(exc.status)
    # storage3 cannot parse the gateway's own error bodies; the status says enough then.
    message = f"HTTP {status}" if str(exc.message).startswith("Unable to parse") else str(exc.message)
    if status in ("400", "401", "403"):
        return failed(item, f"SUPABASE_SERVICE_ROLE_KEY rejected ({message})", KEY_FIX)
    if status == "404":
        return failed(item, f"no Storage API at SUPABASE_URL ({message})", URL_FIX)
    return failed(item, f"error {status}: {message}", "see the Supabase project's Storage logs")


async def check_buckets(client: AsyncClient) -> Outcome:
    """The four buckets the app and the worker use exist."""
    try:
        found = {bucket.id for bucket in await client.storage.list_buckets()}
    except StorageApiError as exc:
        return storage_error(exc)
    except (httpx.TransportError, OSError) as exc:
        return unreachable("Storage buckets", exc)
    missing = sorted(paths.BUCKETS - found)
    if not found:
        return failed("Storage buckets", "no bucket visible: SUPABASE_SERVICE_ROLE_KEY is not the"
                      " service_role key, or the buckets are missing", KEY_FIX)
    if missing:
        return failed("Storage buckets", f"missing: {', '.join(missing)}",
                      "create them (private) in the Supabase dashboard → Storage")
    return passed("Storage buckets", ", ".join(sorted(paths.BUCKETS)))


# --- Realtime --------------------------------------------------------------------------------


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
            self._finish(failed("Realtime", detail, "check SUPABASE_URL, the key and Realtime settings"))


def system_error(error: Exception | None) -> dict[str, Any] | None:
    """The system message inside a CHANNEL_ERROR (realtime-py puts its JSON in the exception)."""
    try:
        payload = json.loads(str(error)) if error is not None else None
    except ValueError:
        return None
    return payload if isinstance(payload, dict) and "extension" in payload else None


def realtime_error(exc: Exception) -> Outcome:
    text = str(exc)
    if any(code in text for code in ("HTTP 401", "HTTP 403")):
        return failed("Realtime", f"SUPABASE_SERVICE_ROLE_KEY rejected ({text})", KEY_FIX)
    if isinstance(exc, OSError):
        return unreachable("Realtime", exc)
    return failed("Realtime", f"{type(exc).__name__}: {text}", URL_FIX)


async def check_realtime(settings: WorkerSettings) -> Outcome:
    """Join a channel on ``public.jobs`` inserts with the official client and wait for the database."""
    if settings.worker_mode == "poll":
        return passed("Realtime", "not used (WORKER_MODE=poll)")
    subscription = Subscription()
    try:
        async with jobs_inserts(settings.supabase_url,
                                settings.supabase_service_role_key.get_secret_value(), CHANNEL,
                                {"max_retries": 1, "initial_backoff": 0.2}, lambda _payload: None,
                                subscription.on_system) as (_client, channel):
            await channel.subscribe(subscription.on_state)
            await subscription.done.wait()
    except Exception as exc:
        return realtime_error(exc)
    assert subscription.outcome is not None
    return subscription.outcome


# --- Gemini ----------------------------------------------------------------------------------


def gemini_error(exc: JobError, settings: WorkerSettings) -> Outcome:
    if isinstance(exc, ConfigurationJobError) and exc.code == "model_not_found":
        return failed("Gemini", f"model {settings.gemini_model} not found",
                      "set GEMINI_MODEL to an image model your key can use")
    if isinstance(exc, ConfigurationJobError):
        return failed("Gemini", "GEMINI_API_KEY rejected",
                      "create a key in Google AI Studio (billing enabled) and set GEMINI_API_KEY")
    where = settings.gemini_base_url or "Google's endpoint"
    return failed("Gemini", f"{exc} ({exc.code}) at {where}", GEMINI_NETWORK_FIX)


async def check_gemini(settings: WorkerSettings) -> Outcome:
    """The key is accepted and the model exists (a model lookup: costs nothing)."""
    from realtime_worker.generator import GeminiGenerator  # google-genai is slow to import

    generator = GeminiGenerator(settings.gemini_api_key.get_secret_value(), settings.gemini_model,
                                settings.gemini_base_url, settings.gemini_timeout_seconds)
    try:
        await generator.check_model()
    except JobError as exc:
        return gemini_error(exc, settings)
    finally:
        await generator.aclose()
    return passed("Gemini", f"key accepted, model {settings.gemini_model} available")


# --- running them ----------------------------------------------------------------------------

Check = Callable[[], Awaitable[Outcome]]
SLOW: dict[str, tuple[str, str]] = {
    "Supabase REST": ("no answer", URL_FIX),
    "Storage buckets": ("no answer", URL_FIX),
    "Realtime": (f"no '{SUBSCRIBED}' system message",
                 "check SUPABASE_URL, the network and that Realtime is enabled for the project"),
    "Gemini": ("no answer", GEMINI_NETWORK_FIX),
}


async def limited(item: str, check: Check, within: float) -> Outcome:
    """``check`` within ``within`` seconds; a ✗ saying so when it takes longer."""
    with anyio.move_on_after(within):
        return await check()
    what, fix = SLOW[item]
    return failed(item, f"{what} within {within:g} s", fix)


async def run_checks(settings: WorkerSettings, *,
                     within: float = DEFAULT_TIMEOUT_SECONDS) -> list[Outcome]:
    """Every outside check side by side, each time-limited; results in a fixed order."""
    async with supabase_client(settings) as client:
        checks: list[tuple[str, Check]] = [
            ("Supabase REST", lambda: check_rest(client)),
            ("Storage buckets", lambda: check_buckets(client)),
            ("Realtime", lambda: check_realtime(settings)),
            ("Gemini", lambda: check_gemini(settings)),
        ]
        results: dict[int, Outcome] = {}

        async def one(index: int, item: str, check: Check) -> None:
            results[index] = await limited(item, check, within)

        async with anyio.create_task_group() as tg:
            for index, (item, check) in enumerate(checks):
                tg.start_soon(one, index, item, check)
    return [results[index] for index in sorted(results)]


async def check_all(settings: WorkerSettings | None, first: Outcome, within: float) -> list[Outcome]:
    """The configuration's line, then (when it is valid) everything it points at."""
    if settings is None:
        return [first]
    return [first, *await run_checks(settings, within=within)]


def cmd_check(args: argparse.Namespace) -> int:
    """Check the configuration, Supabase (REST, migration, Storage, Realtime) and Gemini."""
    settings, first = load_settings()
    secrets = settings.secrets() if settings else []
    tools = settings or config.load(config.ToolSettings)
    logs.configure(tools.log_format, tools.log_level if args.verbose else "CRITICAL", secrets)
    if not args.verbose:  # realtime-py logs each failed connection attempt; the ✗ line says it better
        logging.getLogger("realtime").setLevel(logging.CRITICAL)
    outcomes = anyio.run(check_all, settings, first, args.timeout)
    redact = logs.Redactor(secrets)
    for outcome in outcomes:
        say(redact(outcome.line()))
    return 0 if all(outcome.ok for outcome in outcomes) else 1


def register(subs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subs.add_parser("check", help=cmd_check.__doc__)
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS,
                   help=f"seconds each check may take (default {DEFAULT_TIMEOUT_SECONDS:g})")
    p.add_argument("--verbose", action="store_true", help="also show log lines (at LOG_LEVEL)")
    p.set_defaults(func=cmd_check)
