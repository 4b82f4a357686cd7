"""The chaos soak's data: its database, users, their photos and pages, and the jobs it submits.

Every job carries a unique token (``chaos`` + 12 hex digits) in its user text, which reaches
the Gemini prompt, so each recorded Gemini request can be matched to its job. Jobs are submitted
as the app does (``realtime_worker.submit.submit``: one credit deducted, the job inserted, one
transaction), in bursts, through connection losses: a submission whose outcome is unknown is
looked up by its token before it is tried again, so no job is ever submitted twice.
"""

from __future__ import annotations

import json
import random
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import asyncpg
import httpx

from realtime_worker import submit
from realtime_worker_devstack import postgres
from realtime_worker_devstack import users as app_users

T = TypeVar("T")
DATABASE = "chaos"
PHOTO = Path(__file__).resolve().parents[1] / "fixtures" / "photos" / "sample_photo.jpg"
TOKEN_PREFIX = "chaos"
KINDS = ("text", "image", "edit")
KIND_WEIGHTS = (0.45, 0.35, 0.20)
SUBJECTS = ("a fox in a canoe", "a robot watering flowers", "a dragon reading a book",
            "a lighthouse in a storm", "a cat on a skateboard", "an owl with a lantern",
            "a castle on a hill", "a turtle carrying a house")
EDITS = ("add a party hat", "add a rainbow in the sky", "give it a scarf", "add falling leaves")
STYLES = ("playful", "calm", "bold shapes", "lots of stars")
# Losing the connection (the Postgres restart) or the server refusing while it starts up.
# InternalClientError: a connection the restart cut in the middle of an operation can be left
# in a state where asyncpg refuses the next one ("cannot switch to state …").
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
RETRY_STEP_SECONDS = 0.25

# A harness-only record of every job state change (not part of the product's schema): one row per
# change of status or owner, stamped with clock_timestamp(). Claims, retries, reaps and
# completions are read from it afterwards.
AUDIT_SQL = """
create schema if not exists chaos;
create table if not exists chaos.transitions (
  id bigserial primary key,
  job_id uuid not null,
  old_status text,
  new_status text not null,
  new_locked_by text,
  attempts int not null,
  error_code text,
  old_locked_until timestamptz,
  at timestamptz not null default clock_timestamp()
);
create or replace function chaos.record_transition() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
  if tg_op = 'UPDATE' and old.status = new.status and old.locked_by is not distinct from new.locked_by then
    return null;
  end if;
  insert into chaos.transitions (job_id, old_status, new_status, new_locked_by, attempts, error_code,
                                 old_locked_until)
  values (new.id, case when tg_op = 'UPDATE' then old.status::text end, new.status::text,
          new.locked_by, new.attempts, new.error_code,
          case when tg_op = 'UPDATE' then old.locked_until end);
  return null;
end
$$;
drop trigger if exists chaos_transitions on public.jobs;
create trigger chaos_transitions after insert or update on public.jobs
  for each row execute function chaos.record_transition();
"""


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_hex(6)


async def retrying(action: Callable[[], Awaitable[T]], *, within: float, what: str) -> T:
    """Run ``action`` until it gets through a database outage; bounded by ``within`` seconds."""
    last: BaseException | None = None
    for _ in range(max(1, int(within / RETRY_STEP_SECONDS))):
        try:
            return await action()
        except DB_ERRORS as exc:
            last = exc
            await anyio.sleep(RETRY_STEP_SECONDS)
    raise TimeoutError(f"{what}: the database stayed unreachable for {within} s") from last


async def prepare_database(admin_dsn: str) -> str:
    """The chaos database with the Supabase base, the app's schema, the migration and the audit."""
    dsn = await postgres.create_database(admin_dsn, DATABASE)
    conn = await asyncpg.connect(dsn)
    try:
        await postgres.install_schema(conn)
        await conn.execute(AUDIT_SQL)
    finally:
        await conn.close()
    return dsn


# --- users and their inputs ---------------------------------------------------------------------


@dataclass
class User:
    id: uuid.UUID
    start_balance: int
    photo_asset: uuid.UUID | None = None
    page_job: uuid.UUID | None = None
    page_asset: uuid.UUID | None = None


async def make_users(conn: asyncpg.Connection, count: int, rng: random.Random) -> list[User]:
    """Users as the app's sign-up makes them, each with a known starting balance."""
    made = []
    for _ in range(count):
        user = User(uuid.UUID(int=rng.getrandbits(128), version=4), rng.randint(2000, 3000))
        await app_users.create(conn, user.start_balance, user_id=user.id,
                               email=f"{user.id.hex[:10]}@chaos.test")
        made.append(user)
    return made


async def upload_photos(conn: asyncpg.Connection, http: httpx.AsyncClient, users: list[User]) -> None:
    """The app's upload for each user: the photo in ``originals/<user>/``, then its asset row."""
    photo = PHOTO.read_bytes()
    for user in users:
        name = f"{user.id}/photo.jpg"
        response = await http.post(f"/storage/v1/object/originals/{name}", content=photo,
                                   headers={"Content-Type": "image/jpeg"})
        response.raise_for_status()
        user.photo_asset = await conn.fetchval(
            "insert into public.assets (user_id, kind, storage_path, bytes, width, height)"
            " values ($1, 'original', $2, $3, 800, 600) returning id",
            user.id, name, len(photo))


async def make_pages(conn: asyncpg.Connection, users: list[User], within: float) -> None:
    """One text job per user, done by the workers before the chaos starts: the pages to edit."""
    for user in users:
        token = new_token()
        user.page_job = await submit.submit(conn, {"text_prompt": f"a friendly giraffe {token}",
                                                   "custom_prompt": token}, user_id=user.id)
    with anyio.fail_after(within):
        while await conn.fetchval("select count(*) from public.jobs where status <> 'succeeded'"):
            failed = await conn.fetchval("select count(*) from public.jobs where status = 'failed'")
            if failed:
                raise RuntimeError("a page job failed before the chaos started")
            await anyio.sleep(0.2)
    for user in users:
        user.page_asset = await conn.fetchval(
            "select id from public.assets where kind = 'edge_map' and storage_path = $1",
            f"{user.id}/{user.page_job}/edge.png")


# --- jobs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    token: str
    user: uuid.UUID
    kind: str
    params: dict[str, Any]


def job_spec(rng: random.Random, users: list[User]) -> JobSpec:
    user = rng.choice(users)
    kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
    token = TOKEN_PREFIX + f"{rng.getrandbits(48):012x}"
    params: dict[str, Any] = {
        "custom_prompt": f"{rng.choice(STYLES)} {token}",
        "complexity": rng.choice(("simple", "standard", "detailed")),
        "line_thickness": rng.choice(("thin", "medium", "thick")),
        "paper_size": rng.choice(("A4", "Letter")),
        "title": f"Chaos {token[-4:]}",
    }
    if kind == "text":
        params["text_prompt"] = f"{rng.choice(SUBJECTS)} {token}"
    elif kind == "image":
        params["asset_id"] = str(user.photo_asset)
    else:
        params.update(edit_parent_id=str(user.page_job), edit_source_asset_id=str(user.page_asset),
                      edit_prompt=f"{rng.choice(EDITS)} {token}")
    return JobSpec(token, user.id, kind, params)


def burst_sizes(total: int, bursts: int, rng: random.Random) -> list[int]:
    """``total`` split into ``bursts`` uneven, non-empty parts."""
    bursts = max(1, min(bursts, total))
    weights = [rng.uniform(0.3, 1.7) for _ in range(bursts)]
    scale = (total - bursts) / sum(weights)
    sizes = [1 + int(w * scale) for w in weights]
    sizes[-1] += total - sum(sizes)
    return sizes


class Submitter:
    """Submits jobs over one connection, reconnecting through outages, never twice."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self.submitted: dict[str, uuid.UUID] = {}
        self.retried = 0

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self._dsn)
        return self._conn

    async def _existing(self, token: str) -> uuid.UUID | None:
        conn = await self._connection()
        found = await conn.fetchval(
            "select id from public.jobs where params_json->>'custom_prompt' like $1", f"% {token}")
        return None if found is None else uuid.UUID(str(found))

    async def _attempt(self, spec: JobSpec, first: bool) -> uuid.UUID:
        conn = await self._connection()
        try:
            if not first:
                self.retried += 1
                known = await self._existing(spec.token)
                if known is not None:
                    return known
            return await submit.submit(conn, spec.params, user_id=spec.user)
        except DB_ERRORS:
            conn.terminate()  # the next attempt starts on a new connection, never a half-broken one
            self._conn = None
            raise

    async def submit(self, spec: JobSpec) -> None:
        tries = iter(range(1_000_000))

        async def attempt() -> uuid.UUID:
            return await self._attempt(spec, next(tries) == 0)

        self.submitted[spec.token] = await retrying(attempt, within=60, what="submitting a job")

    async def close(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()


async def submit_in_bursts(submitter: Submitter, specs: list[JobSpec], seconds: float,
                           rng: random.Random) -> None:
    """Submit ``specs`` in uneven bursts spread over about ``seconds``."""
    bursts = burst_sizes(len(specs), max(1, round(seconds / 2.5)), rng)
    gap = seconds / len(bursts)
    position = 0
    for size in bursts:
        for spec in specs[position:position + size]:
            await submitter.submit(spec)
        position += size
        await anyio.sleep(rng.uniform(0.4, 1.6) * gap)


def token_of(params: Any) -> str | None:
    """The job's token (the last word of its custom prompt)."""
    data = json.loads(params) if isinstance(params, str) else params
    text = data.get("custom_prompt") if isinstance(data, dict) else None
    word = text.split()[-1] if isinstance(text, str) and text.split() else ""
    return word if word.startswith(TOKEN_PREFIX) else None


def kind_of(params: Any) -> str:
    data = json.loads(params) if isinstance(params, str) else params
    if data.get("edit_prompt"):
        return "edit"
    return "text" if data.get("text_prompt") else "image"
