-- realtime-worker: the worker's columns of public.jobs belong to the worker.
-- The app lets `authenticated` insert its own jobs (policy "users create own jobs" checks only
-- user_id), and Supabase grants the API roles every column. Without this guard a signed-in user
-- could insert a job with an expired lease and attempts used up, and the next reap would refund
-- whatever `credits_charged` the user chose; or buy unbounded retries with a huge `max_attempts`.
--
-- For statements running as an API role (`anon`, `authenticated`) the trigger forces the worker's
-- columns to their defaults on INSERT and keeps their old values on UPDATE. Everyone else is
-- untouched: `service_role`, the owner, and the worker_* functions (security definer, so
-- current_user is their owner). The app's own columns (status, …) are left as they are.
-- Security invoker on purpose: current_user must be the caller's role. Applying twice changes nothing.

create or replace function public.worker_guard_job_columns() returns trigger
language plpgsql security invoker set search_path = public, pg_temp as $$
begin
  if current_user not in ('anon', 'authenticated') then
    return new;
  end if;
  if tg_op = 'INSERT' then
    new.attempts := 0;
    new.max_attempts := 3;
    new.run_after := now();
    new.locked_by := null;
    new.locked_until := null;
    new.heartbeat_at := null;
    new.error_code := null;
    new.credits_charged := 1;
    new.refunded_at := null;
  else
    new.attempts := old.attempts;
    new.max_attempts := old.max_attempts;
    new.run_after := old.run_after;
    new.locked_by := old.locked_by;
    new.locked_until := old.locked_until;
    new.heartbeat_at := old.heartbeat_at;
    new.error_code := old.error_code;
    new.credits_charged := old.credits_charged;
    new.refunded_at := old.refunded_at;
  end if;
  return new;
end
$$;

-- A trigger function is not an API: nobody calls it (EXECUTE is checked when the trigger is
-- created, by its owner, not when it fires).
revoke all on function public.worker_guard_job_columns() from public, anon, authenticated, service_role;

drop trigger if exists jobs_guard_worker_columns on public.jobs;
create trigger jobs_guard_worker_columns before insert or update on public.jobs
  for each row execute function public.worker_guard_job_columns();
