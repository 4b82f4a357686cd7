"""A user as the app creates one, for the tests, the demo, the devstack and the benchmarks.

Sign-up is one row in ``auth.users`` (what Supabase Auth writes); the app's trigger
``on_auth_user_created`` (fixtures/app_schema.sql, from the app's RLS migration) adds the profile,
a balance of 3 and its ``signup_bonus`` ledger row. Any other balance is reached the way credits
really move, each change with its ledger row in the same transaction, so that ``credit_events``
explains ``credits.balance``: more credits arrive as the Stripe webhook grants a purchase
(apps/web/app/api/stripe/webhook/route.ts: a ``credit_events`` row with the checkout session's
id, then the balance); fewer are credits spent on earlier jobs, as the photo route
records them (apps/web/app/api/jobs/route.ts: ``generation_queued``, delta -1 each).
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any, Protocol

SIGNUP_CREDITS = 3  # the app's handle_new_user()
PACK = "devstack"
SPENT_REASON = "generation_queued"


class Connection(Protocol):
    """What these helpers need of an asyncpg connection (or a pool's proxy of one)."""

    async def execute(self, query: str, *args: Any) -> str: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    def transaction(self) -> Any: ...


def purchase_reason(credits: int, pack: str = PACK) -> str:
    """The ledger reason the app's Stripe webhook writes for a credit pack."""
    return f"Credit pack purchase: {pack} ({credits} credits)"


async def sign_up(conn: Connection, user_id: uuid.UUID | None = None, email: str | None = None) -> uuid.UUID:
    """Supabase Auth's row for a new user; the app's trigger does the rest. An existing id is
    left as it is (so a fixed development user can be signed up on every start)."""
    user_id = user_id or uuid.uuid4()
    await conn.execute("insert into auth.users (id, email) values ($1, $2) on conflict (id) do nothing",
                       user_id, email or f"{user_id.hex[:12]}@example.test")
    return user_id


async def _add(conn: Connection, user_id: uuid.UUID, delta: int) -> None:
    """The balance change itself (what ``increment_user_credits`` does, without depending on a
    function whose grants the hardening migration may change)."""
    await conn.execute("update public.credits set balance = balance + $2 where user_id = $1", user_id, delta)


async def purchase(conn: Connection, user_id: uuid.UUID, credits: int) -> None:
    """What the app's Stripe webhook does for a paid checkout, in one transaction."""
    session = f"cs_test_{secrets.token_hex(12)}"
    async with conn.transaction():
        await conn.execute("insert into public.credit_events (user_id, delta, reason, stripe_event_id)"
                           " values ($1, $2, $3, $4)", user_id, credits, purchase_reason(credits), session)
        await _add(conn, user_id, credits)


async def spend(conn: Connection, user_id: uuid.UUID, credits: int) -> None:
    """Credits spent on earlier jobs: the photo route's debit and ledger rows, in one transaction."""
    async with conn.transaction():
        await conn.execute("insert into public.credit_events (user_id, delta, reason)"
                           " select $1, -1, $2 from generate_series(1, $3)", user_id, SPENT_REASON, credits)
        await _add(conn, user_id, -credits)


async def balance(conn: Connection, user_id: uuid.UUID) -> int:
    value: int = await conn.fetchval("select balance from public.credits where user_id = $1", user_id)
    return value


async def settle(conn: Connection, user_id: uuid.UUID, wanted: int) -> None:
    """Bring the balance to ``wanted`` with a purchase or spent credits (nothing when it is)."""
    difference = wanted - await balance(conn, user_id)
    if difference > 0:
        await purchase(conn, user_id, difference)
    elif difference < 0:
        await spend(conn, user_id, -difference)


async def create(conn: Connection, balance: int = SIGNUP_CREDITS, *,
                 user_id: uuid.UUID | None = None, email: str | None = None) -> uuid.UUID:
    """A new user as the app creates one, holding ``balance`` credits the ledger explains."""
    if balance < 0:
        raise ValueError("a balance cannot be negative")
    user_id = await sign_up(conn, user_id, email)
    await settle(conn, user_id, balance)
    return user_id


async def top_up(conn: Connection, user_id: uuid.UUID, at_least: int) -> None:
    """Buy what is missing for ``user_id`` to hold at least ``at_least`` credits."""
    missing = at_least - await balance(conn, user_id)
    if missing > 0:
        await purchase(conn, user_id, missing)
