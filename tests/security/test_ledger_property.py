"""A stateful property over sequences of a user's API calls and the worker's outcomes.

The user's calls run as PostgREST runs them (role ``authenticated``, the JWT's claims in
``request.jwt.claims``, RLS, grants and triggers deciding); the worker's outcomes are the
contract functions the worker calls as the service role. After every step:

- the ledger explains the balance (sum of ``credit_events.delta`` = ``credits.balance``);
- the balance is exactly what the model predicts, and never above the starting balance plus
  purchases plus the remaining exposure of docs/security.md (a job inserted directly and unpaid
  that then fails through our fault gets one credit; nothing the user sends alone raises it);
- no job is refunded more than once, nor more than it paid.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from realtime_worker_devstack import users
from tests.conftest import Database
from tests.security.support import SIGNUP_CREDITS, balance_of, ledger_total

pytestmark = pytest.mark.integration

T = TypeVar("T")
TEXT = {"text_prompt": "a tiger eating a burger", "complexity": "standard", "line_thickness": "medium"}
OURS = ("gemini_unavailable", "internal", "rate_limited")
THEIRS = ("invalid_params", "content_refused", "input_not_found")


class UserAndWorker(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: asyncpg.Connection) -> None:
        super().__init__()
        self.loop, self.conn = loop, conn
        self.user = self.run(users.sign_up(conn))
        self.expected = SIGNUP_CREDITS
        self.purchases = 0
        self.exposure = 0  # refunds of unpaid direct jobs (docs/security.md "Remaining exposure")
        self.paid: dict[uuid.UUID, str] = {}  # job -> 'create_job' | 'route' | 'unpaid'

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def as_user(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """One request of the signed-in user, as PostgREST runs it."""
        claims = json.dumps({"sub": str(self.user), "role": "authenticated"})
        async with self.conn.transaction():
            await self.conn.execute("select set_config('role', 'authenticated', true),"
                                    " set_config('request.jwt.claims', $1, true),"
                                    " set_config('request.jwt.claim.sub', $2, true)", claims, str(self.user))
            return await self.conn.fetch(query, *args)

    def refused(self, query: str, *args: Any) -> str:
        with pytest.raises(asyncpg.PostgresError) as caught:
            self.run(self.as_user(query, *args))
        return str(caught.value.sqlstate)

    # --- the user's calls -----------------------------------------------------------------

    @rule(target=jobs)
    def create_through_the_function(self) -> uuid.UUID | None:
        if self.expected < 1:
            assert self.refused("select * from public.create_job($1::jsonb)", json.dumps(TEXT)) == "PT402"
            return None
        [row] = self.run(self.as_user("select id from public.create_job($1::jsonb)", json.dumps(TEXT)))
        self.expected -= 1
        self.paid[row["id"]] = "create_job"
        return row["id"]  # type: ignore[no-any-return]

    @rule(target=jobs)
    def insert_as_the_photo_route_does(self) -> uuid.UUID:
        """Insert the job, then debit with a plain UPDATE and write the ledger row (jobs/route.ts)."""
        [row] = self.run(self.as_user("""insert into public.jobs (user_id, status, params_json)
                                         values ($1, 'queued', $2::jsonb) returning id""",
                                      self.user, json.dumps(TEXT)))
        self.run(self.as_user(
            "update public.credits set balance = balance - 1 where user_id = $1", self.user))
        self.run(self.as_user("""insert into public.credit_events (user_id, delta, reason)
                                 values ($1, -1, 'generation_queued')""", self.user))
        self.expected -= 1
        self.paid[row["id"]] = "route"
        return row["id"]  # type: ignore[no-any-return]

    @rule(target=jobs, status=st.sampled_from(["queued", "running", "succeeded", "failed"]),
          back_dated=st.booleans(), params=st.sampled_from([{}, TEXT, {"text_prompt": 3}]))
    def insert_directly_without_paying(self, status: str, back_dated: bool,
                                       params: object) -> uuid.UUID | None:
        query = """insert into public.jobs (user_id, status, params_json, created_at, credits_charged)
                   values ($1, $2::public.job_status, $3::jsonb, $4, 50) returning id, created_at"""
        created = datetime(2000, 1, 1, tzinfo=UTC) if back_dated else datetime.now(UTC)
        args = (self.user, status, json.dumps(params), created)
        if status != "queued":
            assert self.refused(query, *args) == "42501"
            return None
        [row] = self.run(self.as_user(query, *args))
        assert row["created_at"].year > 2000
        self.paid[row["id"]] = "unpaid"
        return row["id"]  # type: ignore[no-any-return]

    @rule(job=jobs, change=st.sampled_from([
        ("status", "'queued'"), ("status", "'succeeded'"), ("params_json", """'{"text_prompt": "free"}'"""),
        ("credits_charged", "100"), ("charged_via", "'create_job'"), ("refunded_at", "now()")]))
    def update_own_job(self, job: uuid.UUID | None, change: tuple[str, str]) -> None:
        """Refused when it would change the job's state or params; worker columns stay as they were."""
        if job is None:
            return
        column, value = change
        before = self.run(self.conn.fetchrow("select * from public.jobs where id = $1", job))
        try:
            self.run(self.as_user(f"update public.jobs set {column} = {value} where id = $1", job))
        except asyncpg.PostgresError as exc:
            assert exc.sqlstate == "42501" and column in ("status", "params_json")
        after = self.run(self.conn.fetchrow("select * from public.jobs where id = $1", job))
        assert before is not None and after is not None
        assert after[column] == before[column]

    @rule()
    def read_own_credits(self) -> None:
        [row] = self.run(self.as_user("select balance from public.credits"))
        assert row["balance"] == self.expected

    @rule(amount=st.sampled_from([1, 10]))
    def purchase(self, amount: int) -> None:
        """The Stripe webhook: a ledger row with the session's id, then the balance."""
        self.run(users.purchase(self.conn, self.user, amount))
        self.expected += amount
        self.purchases += amount

    # --- the worker's outcomes ------------------------------------------------------------

    def claimed(self, job: uuid.UUID | None) -> bool:
        return job is not None and self.run(self.conn.fetchrow(
            "select id from public.worker_claim_job($1, 'w', 60)", job)) is not None

    def settle(self, job: uuid.UUID, code: str) -> None:
        """The model's refund for a job that just failed for good with ``code``."""
        kind = self.paid[job]
        refund = 1 if kind == "create_job" or code in (*OURS, "lease_expired") else 0
        self.expected += refund
        self.exposure += refund if kind == "unpaid" else 0

    @rule(job=jobs)
    def worker_succeeds(self, job: uuid.UUID | None) -> None:
        if self.claimed(job):
            assert self.run(self.conn.fetchval("select public.worker_complete_job($1, 'w', '{}')", job))

    @rule(job=jobs, code=st.sampled_from(OURS + THEIRS))
    def worker_fails_for_good(self, job: uuid.UUID | None, code: str) -> None:
        if self.claimed(job):
            assert job is not None
            assert self.run(self.conn.fetchval(
                "select public.worker_fail_job($1, 'w', 'e', $2, null)", job, code)) == "failed"
            self.settle(job, code)

    @rule(job=jobs)
    def worker_retries(self, job: uuid.UUID | None) -> None:
        if self.claimed(job):
            assert job is not None
            status = self.run(self.conn.fetchval(
                "select public.worker_fail_job($1, 'w', 'e', 'gemini_timeout', 0)", job))
            if status == "failed":  # the attempts were used up
                self.settle(job, "gemini_timeout")

    @rule(job=jobs)
    def lease_runs_out(self, job: uuid.UUID | None) -> None:
        if not self.claimed(job):
            return
        assert job is not None
        self.run(self.conn.execute(
            "update public.jobs set locked_until = now() - interval '1 s' where id = $1", job))
        self.run(self.conn.fetchval("select public.worker_reap_expired(100)"))
        status = self.run(self.conn.fetchval("select status::text from public.jobs where id = $1", job))
        if status == "failed":
            self.settle(job, "lease_expired")

    # --- after every step -----------------------------------------------------------------

    @invariant()
    def the_ledger_explains_the_balance(self) -> None:
        balance = self.run(balance_of(self.conn, self.user))
        assert balance == self.run(ledger_total(self.conn, self.user)) == self.expected
        assert balance <= SIGNUP_CREDITS + self.purchases + self.exposure

    @invariant()
    def refunds_never_exceed_charges(self) -> None:
        over = self.run(self.conn.fetch("""
            select j.id, j.charged_via, j.credits_charged, sum(e.delta) as refunded
            from public.jobs j
            join public.credit_events e on e.job_id = j.id and e.reason = 'generation_failed'
            where j.user_id = $1 group by j.id
            having sum(e.delta) > case when j.charged_via = 'direct' then 1 else j.credits_charged end
                or count(*) > 1""", self.user))
        assert over == []


def test_no_sequence_of_calls_mints_credits(db: Database) -> None:
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(db.dsn))
    try:
        class OnThisDatabase(UserAndWorker):
            def __init__(self) -> None:
                super().__init__(loop, conn)

        run_state_machine_as_test(
            OnThisDatabase,
            settings=settings(max_examples=40, stateful_step_count=25, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow]))
    finally:
        loop.run_until_complete(conn.close())
        loop.close()
