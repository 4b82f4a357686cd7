-- Queries of the command-line tools (migrate, submit, requeue), by name.
-- The worker itself uses only the worker_* functions of the migrations, through PostgREST.

-- name: migration_history
create schema if not exists realtime_worker;
create table if not exists realtime_worker.schema_migrations (
  version text primary key,
  name text not null,
  checksum text not null,
  applied_at timestamptz not null default now()
);
revoke all on schema realtime_worker from public;

-- name: applied_versions
select version from realtime_worker.schema_migrations;

-- name: record_migration
insert into realtime_worker.schema_migrations (version, name, checksum)
values ($1, $2, $3)
on conflict (version) do update set checksum = excluded.checksum, applied_at = now();

-- name: user_by_email
select id from public.users where email = $1;

-- name: charge_credit
update public.credits set balance = balance - 1, updated_at = now()
where user_id = $1 and balance >= 1
returning balance;

-- name: insert_job
insert into public.jobs (user_id, params_json) values ($1, $2::jsonb) returning id;

-- name: record_charge
-- The ledger's row of the charge, with the reasons the app's routes write (and create_job).
insert into public.credit_events (user_id, delta, reason, job_id) values ($1, -1, $2, $3);

-- name: requeue_failed_job
-- A refunded job is requeued free of charge, so the ledger stays exact whatever happens next.
update public.jobs set status = 'queued', attempts = 0, run_after = now(),
  locked_by = null, locked_until = null, heartbeat_at = null, ended_at = null,
  error = null, error_code = null,
  credits_charged = case when refunded_at is null then credits_charged else 0 end
where id = $1 and status = 'failed'
returning credits_charged;

-- name: job_status
select status::text from public.jobs where id = $1;

-- name: job_outcome
select status::text as status, error, model, cost_cents, attempts from public.jobs where id = $1;
