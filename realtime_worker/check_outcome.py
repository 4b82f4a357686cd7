"""What ``realtime-worker check`` reports: one line per item, ✓ or ✗ with the fix, and the ✗
lines several checks share (an unreachable SUPABASE_URL, an error answer to a migration's RPC)."""

from __future__ import annotations

from dataclasses import dataclass

from postgrest.exceptions import APIError

PROBE_RPC = "worker_reap_expired"
MIGRATION_FIX = "run `realtime-worker migrate` or apply `realtime-worker sql`"
KEY_FIX = "set SUPABASE_SERVICE_ROLE_KEY to the project's service_role key (Project Settings → API)"
URL_FIX = "check SUPABASE_URL (https://<project-ref>.supabase.co) and the network"
MISSING_FUNCTION_CODES = frozenset({"PGRST202", "42883"})
_KEY_CODES = frozenset({"PGRST301", "PGRST302", "PGRST303", "401"})


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


def rest_error(exc: APIError, item: str = "Supabase REST", rpc: str = PROBE_RPC) -> Outcome:
    """The ✗ for an error answer to ``rpc``, an RPC only a migration provides."""
    code, message = str(exc.code or ""), str(exc.message or "")
    if code in MISSING_FUNCTION_CODES:
        return failed(item, f"migration not applied ({rpc} not found)", MIGRATION_FIX)
    if code in _KEY_CODES or message.startswith(("Invalid API key", "No API key")):
        return failed(item, f"SUPABASE_SERVICE_ROLE_KEY rejected ({message or code})", KEY_FIX)
    if code == "42501":
        return failed(item, f"SUPABASE_SERVICE_ROLE_KEY may not call {rpc} (permission denied):"
                            " it is not the service_role key", KEY_FIX)
    if code == "404":
        return failed(item, f"no {rpc} at SUPABASE_URL/rest/v1 (HTTP 404)",
                      f"check SUPABASE_URL; if it is right, {MIGRATION_FIX}")
    return failed(item, f"error {code}: {message}", "see the Supabase project's API logs")
