-- realtime-worker: a batch claim takes turns between users within the batch too (issue 18).
-- 0012 filled a batch with each user's oldest due job (the user served longest ago first), then
-- with the oldest due jobs: a batch of 4 behind a burst took one job of the newcomer and three of
-- the burst. Now the batch goes round by round: every user's first due job, then every user's
-- second, and so on, the user served longest ago first within a round; so a batch of 4 with two
-- users takes two of each. With the fleet's Gemini budget (0014) a batch is as large as the
-- budget's turns within GEMINI_CLAIM_AHEAD_SECONDS, and this is what keeps a newcomer's few jobs
-- from waiting behind a burst's. A user's turn is still the last claim that served the user
-- (realtime_worker.claim_turns). The oldest due jobs stay the last tier, as before.
-- Same name, arguments, result and rows; CREATE OR REPLACE keeps owner and grants.
-- Applying twice changes nothing.

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
  ), rounds as (
    select h.id, 0 as tier, h.round, coalesce(t.turn, 0) as turn, h.created_at
    from queued_users u
    cross join lateral (
      select q.id, q.created_at, row_number() over (order by q.created_at, q.id) as round
      from public.jobs q
      where q.status = 'queued' and q.user_id = u.user_id and q.run_after <= now()
      order by q.created_at, q.id limit greatest(p_limit, 0)) h
    left join realtime_worker.claim_turns t on t.user_id = u.user_id
    order by 3, 4, 5, 1
    limit greatest(p_limit, 0) * 8 + 64
  ), oldest as (
    select q.id, 1 as tier, 0::bigint as round, 0::bigint as turn, q.created_at from public.jobs q
    where q.status = 'queued' and q.run_after <= now()
    order by q.created_at, q.id
    limit greatest(p_limit, 0) * 8 + 64
  ), candidates as (
    select distinct on (c.id) c.id, c.tier, c.round, c.turn, c.created_at
    from (select * from rounds union all select * from oldest) c
    order by c.id, c.tier
  ), due as (
    select j.id from public.jobs j join candidates c on c.id = j.id
    where j.status = 'queued' and j.run_after <= now()
    order by c.tier, c.round, c.turn, c.created_at, c.id
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
