-- realtime-worker: the queue's depth for /metrics, read when /metrics is scraped (issue 18,
-- docs/scaling.md). One cheap statement over the queued partial index: no timer, so a worker
-- nobody scrapes costs the database nothing more. Applying twice changes nothing.

create or replace function public.worker_queue_depth() returns jsonb
language sql stable security definer set search_path = public, pg_temp as $$
  select jsonb_build_object(
    'due', count(*),
    'oldest_due_age_seconds', coalesce(extract(epoch from now() - min(created_at)), 0))
  from public.jobs
  where status = 'queued' and run_after <= now()
$$;

revoke all on function public.worker_queue_depth() from public, anon, authenticated;
grant execute on function public.worker_queue_depth() to service_role;
