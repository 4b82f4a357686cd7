-- realtime-worker: the two claim functions in plpgsql (same names, arguments, results and rows).
-- A `language sql` function with a SET clause is never inlined, and PostgreSQL before 18 plans its
-- body again on every call; a plpgsql function keeps the plan of its statement for the session.
-- The claim is on the path of every job's pickup. CREATE OR REPLACE keeps owner and grants;
-- applying this twice changes nothing.

create or replace function public.worker_claim_job(p_job_id uuid, p_worker text, p_lease_seconds int)
returns setof public.jobs
language plpgsql security definer set search_path = public, pg_temp as $$
begin
  return query
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
  returning j.*;
end
$$;

create or replace function public.worker_claim_jobs(p_worker text, p_limit int, p_lease_seconds int)
returns setof public.jobs
language plpgsql security definer set search_path = public, pg_temp as $$
begin
  return query
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
  returning j.*;
end
$$;
