-- realtime-worker: Broadcast from Database as the wake-up source (WAKEUP_SOURCE=broadcast).
-- Applied only on request (`realtime-worker migrate --wakeup broadcast`, `sql --wakeup broadcast`):
-- with postgres_changes nobody reads these messages, and every job would still pay one more row
-- in realtime.messages inside the app's INSERT.
--
-- Every queued job inserted into public.jobs sends one Broadcast message on the private topic
-- `worker:jobs` (event INSERT, payload {"job_id": …}). Only the job's id crosses Realtime: the
-- worker claims by id and reads the row itself, so no prompt or user data is streamed, and the
-- message stays far below the Broadcast payload limit whatever params_json holds.
--
-- The trigger function is security definer: the app inserts jobs as `authenticated`, and
-- realtime.send runs as its caller, whose insert into realtime.messages RLS would refuse (send
-- turns that into a WARNING and the wake-up is lost; the job is never affected, the sweep still
-- finds it). The owner is whoever applies this migration (`postgres` on Supabase).
--
-- Reading the topic: the Realtime server authorises a private join by reading a probe row of
-- realtime.messages as the joining role, with realtime.topic() set to the channel's topic. The
-- permissive policy lets service_role read `worker:jobs`; the restrictive one keeps anon and
-- authenticated out of that topic (reading and sending) even if the project later adds a broad
-- policy for its own private channels. Applying twice changes nothing.

create or replace function public.worker_broadcast_job_insert() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
  if new.status = 'queued' then
    perform realtime.send(jsonb_build_object('job_id', new.id), 'INSERT', 'worker:jobs', true);
  end if;
  return null;
end
$$;
revoke all on function public.worker_broadcast_job_insert() from public, anon, authenticated, service_role;

drop trigger if exists worker_broadcast_job_insert on public.jobs;
create trigger worker_broadcast_job_insert after insert on public.jobs
  for each row execute function public.worker_broadcast_job_insert();

drop policy if exists worker_jobs_topic_service_role on realtime.messages;
create policy worker_jobs_topic_service_role on realtime.messages
  for select to service_role
  using (realtime.topic() = 'worker:jobs' and extension = 'broadcast');

drop policy if exists worker_jobs_topic_not_for_users on realtime.messages;
create policy worker_jobs_topic_not_for_users on realtime.messages
  as restrictive for all to anon, authenticated
  using (topic is distinct from 'worker:jobs')
  with check (topic is distinct from 'worker:jobs');

-- The worker asks for this at start when WAKEUP_SOURCE=broadcast: without this migration no
-- message would ever come (service_role may join any private topic) and every pickup would
-- silently wait for the sweep; PostgREST's "function not found" makes it stop with the fix.
create or replace function public.worker_broadcast_topic() returns text
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  select 'worker:jobs'::text
$$;
revoke all on function public.worker_broadcast_topic() from public, anon, authenticated;
grant execute on function public.worker_broadcast_topic() to service_role;
