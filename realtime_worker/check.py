"""``realtime-worker check``: is this configuration ready to run a worker?

One line per item, ✓ or ✗ with the fix: the configuration; Supabase REST with the migration
(``worker_reap_expired(0)``, an RPC only the migration provides, with the service-role key);
the Storage buckets; Realtime as the worker's listener will use it (``check_realtime``: the
``public.jobs`` subscription, or the Broadcast migration and private join); Gemini (key
accepted, model available). Every check has its own time limit and they run side by side. The
exit code is 0 only when every line is ✓. Secrets are never printed: every line goes through the redactor
the logs use.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
from postgrest.exceptions import APIError
from storage3.exceptions import StorageApiError
from supabase import AsyncClient

from realtime_worker import check_realtime, config, logs, paths
from realtime_worker.check_outcome import (
    KEY_FIX,
    PROBE_RPC,
    URL_FIX,
    Outcome,
    failed,
    passed,
    rest_error,
    unreachable,
)
from realtime_worker.config import WorkerSettings
from realtime_worker.console import say
from realtime_worker.errors import ConfigError, ConfigurationJobError, JobError
from realtime_worker.worker import supabase_client

DEFAULT_TIMEOUT_SECONDS = 10.0
GEMINI_NETWORK_FIX = "check the network (and GEMINI_BASE_URL, which is normally unset)"


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
Slow = dict[str, tuple[str, str]]
SLOW: Slow = {
    "Supabase REST": ("no answer", URL_FIX),
    "Storage buckets": ("no answer", URL_FIX),
    "Gemini": ("no answer", GEMINI_NETWORK_FIX),
}


async def limited(item: str, check: Check, within: float, slow: Slow) -> Outcome:
    """``check`` within ``within`` seconds; a ✗ saying so (``slow[item]``) when it takes longer."""
    with anyio.move_on_after(within):
        return await check()
    what, fix = slow[item]
    return failed(item, f"{what} within {within:g} s", fix)


async def run_checks(settings: WorkerSettings, *,
                     within: float = DEFAULT_TIMEOUT_SECONDS) -> list[Outcome]:
    """Every outside check side by side, each time-limited; results in a fixed order."""
    async with supabase_client(settings) as client:
        checks: list[tuple[str, Check]] = [
            ("Supabase REST", lambda: check_rest(client)),
            ("Storage buckets", lambda: check_buckets(client)),
            ("Realtime", lambda: check_realtime.check(settings, client)),
            ("Gemini", lambda: check_gemini(settings)),
        ]
        results: dict[int, Outcome] = {}
        slow = {**SLOW, "Realtime": check_realtime.slow(settings)}

        async def one(index: int, item: str, check: Check) -> None:
            results[index] = await limited(item, check, within, slow)

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
