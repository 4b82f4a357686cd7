-- realtime-worker: claims take turns between users (issue 18, docs/scaling.md).
-- With a backlog, worker_claim_jobs takes first the head of each user's queue (the user's oldest
-- due job), the user served longest ago first (never served: first of all), oldest first among
-- equals; then, if the batch has room, the oldest due jobs as before. So one user's burst of 200
-- pages delays another user's single page by at most one claim per user ahead of it, instead of
-- the whole burst. A user's turn is the number of the last claim_jobs call that served the user
-- (realtime_worker.claim_turns, one row per user, written in the claim's own statement).
-- worker_claim_job (by id, on a Realtime event) is unchanged.
--
-- Cost: the users with queued jobs are found by a skip scan of a partial index (one index probe
-- per such user, not per queued job), each user's head by one more probe; finished jobs are never
-- read. Same name, arguments, result and rows; CREATE OR REPLACE keeps owner and grants.
-- Applying twice changes nothing.

create schema if not exists realtime_worker;
revoke all on schema realtime_worker from public;

create table if not exists realtime_worker.claim_turns (
  user_id uuid primary key,
  turn bigint not null
);
create sequence if not exists realtime_worker.claim_turn_seq;

create index if not exists jobs_queued_user_created_at_idx
  on public.jobs (user_id, created_at, id) where status = 'queued';

-- The candidate pools are larger than the batch: ``due`` takes its rows with ``skip locked``, so
-- workers claiming at the same moment must find other rows than the ones a concurrent claim holds
-- (with pools of exactly ``p_limit`` they all saw the same rows, and all but one got nothing while
-- jobs were due). The order, and so the fairness, is decided by ``due`` alone.
create or replace function public.worker_claim_jobs(p_worker text, p_limit int, p_lease_seconds int)
returns setof public.jobs
language plpgsql security definer set search_path = public, pg_temp as $$
begin
  return query
  with recursive queued_users (user_id) as (
    (select q.user_id from public.jobs q where q.status = 'queued' order by q.user_id limit 1)
    union all
    select (select q.user_id from public.jobs q
            where q.status = 'queued' and q.user_id > u.user_id order by q.user_id limit 1)
    from queued_users u where u.user_id is not null
  ), heads as (
    select h.id, 0 as tier, coalesce(t.turn, 0) as turn, h.created_at
    from queued_users u
    cross join lateral (
      select q.id, q.created_at from public.jobs q
      where q.status = 'queued' and q.user_id = u.user_id and q.run_after <= now()
      order by q.created_at, q.id limit 1) h
    left join realtime_worker.claim_turns t on t.user_id = u.user_id
    order by 3, 4, 1
    limit greatest(p_limit, 0) * 8 + 64
  ), oldest as (
    select q.id, 1 as tier, 0::bigint as turn, q.created_at from public.jobs q
    where q.status = 'queued' and q.run_after <= now()
    order by q.created_at, q.id
    limit greatest(p_limit, 0) * 8 + 64
  ), candidates as (
    select distinct on (c.id) c.id, c.tier, c.turn, c.created_at
    from (select * from heads union all select * from oldest) c
    order by c.id, c.tier
  ), due as (
    select j.id from public.jobs j join candidates c on c.id = j.id
    where j.status = 'queued' and j.run_after <= now()
    order by c.tier, c.turn, c.created_at, c.id
    limit greatest(p_limit, 0)
    for update of j skip locked
  ), claimed as (
    update public.jobs j set
      status = 'running',
      attempts = j.attempts + 1,
      locked_by = p_worker,
      locked_until = now() + make_interval(secs => p_lease_seconds),
      heartbeat_at = now(),
      started_at = coalesce(j.started_at, now())
    from due where j.id = due.id
    returning j.*
  ), this_turn as (
    select nextval('realtime_worker.claim_turn_seq') as n
  ), turned as (
    insert into realtime_worker.claim_turns as t (user_id, turn)
    select distinct c.user_id, (select n from this_turn) from claimed c
    on conflict (user_id) do update set turn = excluded.turn
  )
  select * from claimed;
end
$$;
