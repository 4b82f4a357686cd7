-- realtime-worker: the hinted claim commits without waiting for its WAL flush.
-- `worker_claim_job` is the claim on the pickup path (one job, named by a Realtime event). Its
-- transaction sets synchronous_commit = off for itself only (set_config(…, true): local to the
-- transaction PostgREST runs the call in; a SET clause on the function would end before the
-- commit). Measured: `python -m bench.claim_sql` (docs/realtime-sources.md).
--
-- What a Postgres crash can cost: a claim committed at most ~3 × wal_writer_delay (600 ms by
-- default) before the crash, and not yet flushed by the WAL writer or by any later synchronous
-- commit, is rolled back by recovery. The job is `queued` again with its attempt uncounted; the
-- worker that ran it finds its lease gone (heartbeat false: it stops the run; complete and fail
-- are refused, so no result, no refund and no second completion come from it); the next sweep
-- claims it again under a new owner. Worst case: one more Gemini call for a job claimed in the
-- last instant before a crash. Every other worker_* function keeps synchronous commits: they
-- write results, refunds and retries, which must survive a crash.
-- tests/integration/test_claim_crash.py crashes a real Postgres right after such a claim.

create or replace function public.worker_claim_job(p_job_id uuid, p_worker text, p_lease_seconds int)
returns setof public.jobs
language plpgsql security definer set search_path = public, pg_temp as $$
begin
  perform set_config('synchronous_commit', 'off', true);
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
