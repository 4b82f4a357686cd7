-- realtime-worker: the database contract (DESIGN.md "Database contract").
-- Additive and idempotent: it adds columns, indexes and functions and never changes what the app
-- already has. Applying it twice changes nothing.

alter table public.jobs add column if not exists attempts int not null default 0;
alter table public.jobs add column if not exists max_attempts int not null default 3;
alter table public.jobs add column if not exists run_after timestamptz not null default now();
alter table public.jobs add column if not exists locked_by text;
alter table public.jobs add column if not exists locked_until timestamptz;
alter table public.jobs add column if not exists heartbeat_at timestamptz;
alter table public.jobs add column if not exists error_code text;
alter table public.jobs add column if not exists credits_charged int not null default 1;
alter table public.jobs add column if not exists refunded_at timestamptz;

alter table public.credit_events add column if not exists job_id uuid;

-- One refund (or any other per-job credit event) per job and reason.
create unique index if not exists credit_events_job_id_reason_key
  on public.credit_events (job_id, reason) where job_id is not null;

-- Claiming reads only queued rows and reaping only running ones, however many finished jobs exist.
create index if not exists jobs_queued_created_at_idx
  on public.jobs (created_at, id) where status = 'queued';
create index if not exists jobs_running_locked_until_idx
  on public.jobs (locked_until) where status = 'running';

-- Refund a failed job's credits once: the unique index on (job_id, reason) makes a second call a no-op.
create or replace function public.worker_refund_job(p_job public.jobs) returns boolean
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_event uuid;
begin
  if p_job.credits_charged <= 0 then
    return false;
  end if;
  insert into public.credit_events (user_id, delta, reason, job_id)
  values (p_job.user_id, p_job.credits_charged, 'generation_failed', p_job.id)
  on conflict (job_id, reason) where job_id is not null do nothing
  returning id into v_event;
  if v_event is null then
    return false;
  end if;
  insert into public.credits as c (user_id, balance) values (p_job.user_id, p_job.credits_charged)
  on conflict (user_id) do update set balance = c.balance + excluded.balance, updated_at = now();
  update public.jobs set refunded_at = now() where id = p_job.id;
  return true;
end
$$;

create or replace function public.worker_claim_job(p_job_id uuid, p_worker text, p_lease_seconds int)
returns setof public.jobs
language sql security definer set search_path = public, pg_temp as $$
  with due as (
    select id from public.jobs
    where id = p_job_id and status = 'queued' and run_after <= now()
    for update skip locked
  )
  update public.jobs j set
    status = 'running',
    attempts = j.attempts + 1,
    locked_by = p_worker,
    locked_until = now() + make_interval(secs => p_lease_seconds),
    heartbeat_at = now(),
    started_at = coalesce(j.started_at, now())
  from due where j.id = due.id
  returning j.*
$$;

create or replace function public.worker_claim_jobs(p_worker text, p_limit int, p_lease_seconds int)
returns setof public.jobs
language sql security definer set search_path = public, pg_temp as $$
  with due as (
    select id from public.jobs
    where status = 'queued' and run_after <= now()
    order by created_at, id
    limit greatest(p_limit, 0)
    for update skip locked
  )
  update public.jobs j set
    status = 'running',
    attempts = j.attempts + 1,
    locked_by = p_worker,
    locked_until = now() + make_interval(secs => p_lease_seconds),
    heartbeat_at = now(),
    started_at = coalesce(j.started_at, now())
  from due where j.id = due.id
  returning j.*
$$;

create or replace function public.worker_heartbeat(p_job_id uuid, p_worker text, p_lease_seconds int)
returns boolean
language plpgsql security definer set search_path = public, pg_temp as $$
begin
  update public.jobs set
    locked_until = now() + make_interval(secs => p_lease_seconds),
    heartbeat_at = now()
  where id = p_job_id and status = 'running' and locked_by = p_worker;
  return found;
end
$$;

-- Owner only. A second call by the same worker returns true and inserts nothing.
create or replace function public.worker_complete_job(p_job_id uuid, p_worker text, p_result jsonb)
returns boolean
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  j public.jobs;
begin
  select * into j from public.jobs where id = p_job_id for update;
  if not found or j.locked_by is distinct from p_worker then
    return false;
  end if;
  if j.status = 'succeeded' then
    return true;
  end if;
  if j.status <> 'running' then
    return false;
  end if;
  insert into public.assets (user_id, kind, storage_path, width, height, bytes, hash)
  select j.user_id, (a ->> 'kind')::public.asset_kind, a ->> 'storage_path',
         (a ->> 'width')::int, (a ->> 'height')::int, (a ->> 'bytes')::int, a ->> 'hash'
  from jsonb_array_elements(coalesce(p_result -> 'assets', '[]'::jsonb)) as a;
  update public.jobs set
    status = 'succeeded',
    model = p_result ->> 'model',
    cost_cents = (p_result ->> 'cost_cents')::int,
    ended_at = now(),
    locked_until = null,
    error = null,
    error_code = null
  where id = p_job_id;
  return true;
end
$$;

-- Owner only. Returns the job's new status, or null when this worker does not own the job.
create or replace function public.worker_fail_job(
  p_job_id uuid, p_worker text, p_error text, p_error_code text, p_retry_in_seconds int
) returns text
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  j public.jobs;
begin
  select * into j from public.jobs where id = p_job_id for update;
  if not found or j.locked_by is distinct from p_worker then
    return null;
  end if;
  if j.status = 'failed' then
    return 'failed';
  end if;
  if j.status <> 'running' then
    return null;
  end if;
  if p_retry_in_seconds is not null and j.attempts < j.max_attempts then
    update public.jobs set
      status = 'queued',
      run_after = now() + make_interval(secs => greatest(p_retry_in_seconds, 0)),
      locked_by = null, locked_until = null, heartbeat_at = null,
      error = p_error, error_code = p_error_code
    where id = p_job_id;
    return 'queued';
  end if;
  update public.jobs set
    status = 'failed', ended_at = now(), locked_until = null,
    error = p_error, error_code = p_error_code
  where id = p_job_id
  returning * into j;
  perform public.worker_refund_job(j);
  return 'failed';
end
$$;

-- Owner only: give a running job back without counting the attempt (shutdown).
create or replace function public.worker_release_job(p_job_id uuid, p_worker text)
returns boolean
language plpgsql security definer set search_path = public, pg_temp as $$
begin
  update public.jobs set
    status = 'queued',
    attempts = greatest(attempts - 1, 0),
    run_after = now(),
    locked_by = null, locked_until = null, heartbeat_at = null
  where id = p_job_id and status = 'running' and locked_by = p_worker;
  return found;
end
$$;

-- Running jobs whose lease expired: queued again, or failed and refunded when attempts are used up.
create or replace function public.worker_reap_expired(p_limit int)
returns int
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  j public.jobs;
  n int := 0;
begin
  for j in
    select * from public.jobs
    where status = 'running' and locked_until < now()
    order by locked_until
    limit greatest(p_limit, 0)
    for update skip locked
  loop
    if j.attempts < j.max_attempts then
      update public.jobs set
        status = 'queued', run_after = now(),
        locked_by = null, locked_until = null, heartbeat_at = null,
        error = 'The worker running this job stopped responding; it will be retried.',
        error_code = 'lease_expired'
      where id = j.id;
    else
      update public.jobs set
        status = 'failed', ended_at = now(), locked_until = null,
        error = 'The job could not be finished after several attempts.',
        error_code = 'lease_expired'
      where id = j.id
      returning * into j;
      perform public.worker_refund_job(j);
    end if;
    n := n + 1;
  end loop;
  return n;
end
$$;

do $$
declare
  fn text;
begin
  foreach fn in array array[
    'public.worker_refund_job(public.jobs)',
    'public.worker_claim_job(uuid, text, int)',
    'public.worker_claim_jobs(text, int, int)',
    'public.worker_heartbeat(uuid, text, int)',
    'public.worker_complete_job(uuid, text, jsonb)',
    'public.worker_fail_job(uuid, text, text, text, int)',
    'public.worker_release_job(uuid, text)',
    'public.worker_reap_expired(int)'
  ] loop
    execute format('revoke all on function %s from public, anon, authenticated', fn);
    if fn <> 'public.worker_refund_job(public.jobs)' then
      execute format('grant execute on function %s to service_role', fn);
    else
      execute format('revoke all on function %s from service_role', fn);
    end if;
  end loop;
end
$$;

do $$
begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime for table public.jobs;
  elsif not exists (
    select 1 from pg_publication_tables
    where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'jobs'
  ) then
    alter publication supabase_realtime add table public.jobs;
  end if;
end
$$;
