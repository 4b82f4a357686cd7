-- realtime-worker: a 429 is not the job's fault (issue 18, docs/scaling.md).
-- When Gemini's quota (or the fleet's own budget of it, 0011) has no room, the worker gives the
-- job back with worker_defer_job: queued again at the time Gemini named (RetryInfo), no slot
-- held, the attempt not counted. Each job has its own bounded budget of deferrals: past
-- jobs.deferrals = 20 it fails like any other failure, refunded by the rule of 0004.
-- Additive and idempotent: applying twice changes nothing.

alter table public.jobs add column if not exists deferrals int not null default 0;

-- The API roles never choose a job's deferrals (the guard of 0003/0004 covers the other worker
-- columns; this one is ours). Security invoker on purpose: current_user is the caller's role.
create or replace function public.worker_guard_job_deferrals() returns trigger
language plpgsql security invoker set search_path = public, pg_temp as $$
begin
  if current_user in ('anon', 'authenticated') then
    new.deferrals := case when tg_op = 'INSERT' then 0 else old.deferrals end;
  end if;
  return new;
end
$$;
revoke all on function public.worker_guard_job_deferrals() from public, anon, authenticated, service_role;

drop trigger if exists jobs_guard_deferrals on public.jobs;
create trigger jobs_guard_deferrals before insert or update on public.jobs
  for each row execute function public.worker_guard_job_deferrals();

-- Owner only. Returns 'queued' (deferred), 'failed' (the deferral budget is spent: failed and
-- refunded), or null when this worker does not own the job. A second call after 'failed' returns
-- 'failed' and refunds nothing more.
create or replace function public.worker_defer_job(
  p_job_id uuid, p_worker text, p_error text, p_error_code text, p_retry_in_seconds int
) returns text
language plpgsql security definer set search_path = public, pg_temp as $$
begin
  update public.jobs set
    status = 'queued',
    attempts = greatest(attempts - 1, 0),
    deferrals = deferrals + 1,
    run_after = now() + make_interval(secs => greatest(coalesce(p_retry_in_seconds, 0), 0)),
    locked_by = null, locked_until = null, heartbeat_at = null,
    error = p_error, error_code = p_error_code
  where id = p_job_id and status = 'running' and locked_by = p_worker and deferrals < 20;
  if found then
    return 'queued';
  end if;
  -- Not deferred: the job is not this worker's, or its budget of deferrals is spent. A failure
  -- without a retry says the rest (null, or failed and refunded once, or 'failed' again).
  return public.worker_fail_job(p_job_id, p_worker, p_error, p_error_code, null);
end
$$;

revoke all on function public.worker_defer_job(uuid, text, text, text, int) from public, anon, authenticated;
grant execute on function public.worker_defer_job(uuid, text, text, text, int) to service_role;
