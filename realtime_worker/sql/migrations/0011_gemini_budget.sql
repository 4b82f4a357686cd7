-- realtime-worker: one Gemini budget for the whole fleet (issue 18, docs/scaling.md).
-- Gemini's limits belong to the Google Cloud project and model, shared by every worker process.
-- Each process asks this table before each request, with ONE call of worker_gemini_acquire, and
-- says how it went with worker_gemini_release. Per model:
--   * a rate (requests per minute), spent as reserved start times (GCRA: the theoretical arrival
--     time `tat` moves one interval, 60 / rate seconds, per grant). A caller whose turn comes
--     within p_max_wait_seconds gets a grant and waits that long by itself; a later one is told
--     how long to wait and takes no grant (its job is deferred, not failed);
--   * a concurrency limit: grants not yet released (each a lease, so a process that dies frees
--     its grant when the lease runs out);
--   * adaptive (AIMD): a 429 halves the rate (once per hold) and holds every grant back for the
--     retryDelay; each success raises the rate by a twentieth of the ceiling, up to the ceiling.
-- The ceilings come from the callers (GEMINI_RPM, GEMINI_MAX_CONCURRENT). No extra service.
-- Additive and idempotent: applying twice changes nothing.

create schema if not exists realtime_worker;
revoke all on schema realtime_worker from public;

create table if not exists realtime_worker.gemini_budget (
  model text primary key,
  ceiling_rpm double precision not null,
  max_concurrent int not null,
  rate_rpm double precision not null,
  tat timestamptz not null default now(),
  hold_until timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create table if not exists realtime_worker.gemini_grants (
  id uuid primary key default gen_random_uuid(),
  model text not null references realtime_worker.gemini_budget (model) on delete cascade,
  worker text not null,
  starts_at timestamptz not null,
  expires_at timestamptz not null
);
create index if not exists gemini_grants_model_expires_idx
  on realtime_worker.gemini_grants (model, expires_at);

-- The model's row, created or brought to the caller's ceilings, locked for this transaction.
create or replace function public.worker_gemini_budget_row(p_model text, p_rpm double precision,
                                                           p_max_concurrent int)
returns realtime_worker.gemini_budget
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  b realtime_worker.gemini_budget;
begin
  insert into realtime_worker.gemini_budget as g (model, ceiling_rpm, max_concurrent, rate_rpm)
  values (p_model, p_rpm, p_max_concurrent, p_rpm)
  on conflict (model) do update set
    ceiling_rpm = excluded.ceiling_rpm,
    max_concurrent = excluded.max_concurrent,
    rate_rpm = least(g.rate_rpm, excluded.ceiling_rpm)
  where (g.ceiling_rpm, g.max_concurrent) is distinct from (excluded.ceiling_rpm, excluded.max_concurrent);
  select * into b from realtime_worker.gemini_budget where model = p_model for update;
  return b;
end
$$;

-- One call before each Gemini request. Returns {"granted": true, "grant": id, "wait_seconds": w}
-- (start the request w seconds from now) or {"granted": false, "wait_seconds": w, "reason":
-- "rate" | "concurrency"} (no grant taken: ask again, or defer the job, in w seconds).
create or replace function public.worker_gemini_acquire(
  p_model text, p_worker text, p_rpm double precision, p_max_concurrent int,
  p_max_wait_seconds double precision, p_lease_seconds int
) returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  b realtime_worker.gemini_budget;
  v_start timestamptz;
  v_wait double precision;
  v_grant uuid;
begin
  if p_rpm is null or p_rpm <= 0 or p_max_concurrent is null or p_max_concurrent < 1 then
    perform public.worker_raise('22023', 'the Gemini budget needs a rate > 0 and a concurrency >= 1');
  end if;
  b := public.worker_gemini_budget_row(p_model, p_rpm, p_max_concurrent);
  delete from realtime_worker.gemini_grants where model = p_model and expires_at < now();
  v_start := greatest(now(), b.tat, b.hold_until);
  v_wait := extract(epoch from v_start - now());
  if v_wait > p_max_wait_seconds then
    return jsonb_build_object('granted', false, 'wait_seconds', v_wait, 'reason', 'rate');
  end if;
  if (select count(*) from realtime_worker.gemini_grants where model = p_model) >= b.max_concurrent then
    return jsonb_build_object('granted', false, 'wait_seconds', 0.5, 'reason', 'concurrency');
  end if;
  update realtime_worker.gemini_budget
  set tat = v_start + make_interval(secs => 60.0 / rate_rpm), updated_at = now()
  where model = p_model;
  insert into realtime_worker.gemini_grants (model, worker, starts_at, expires_at)
  values (p_model, p_worker, v_start, v_start + make_interval(secs => p_lease_seconds))
  returning id into v_grant;
  return jsonb_build_object('granted', true, 'grant', v_grant, 'wait_seconds', v_wait);
end
$$;

-- After the request: 'ok' raises the rate additively; 'rate_limited' (a 429) halves it once per
-- hold and holds every grant back for p_retry_in_seconds; anything else only frees the grant.
-- Returns the model's rate after the call (null for an unknown grant).
create or replace function public.worker_gemini_release(
  p_grant uuid, p_outcome text, p_retry_in_seconds double precision
) returns double precision
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_model text;
  v_rate double precision;
begin
  delete from realtime_worker.gemini_grants where id = p_grant returning model into v_model;
  if v_model is null then
    return null;
  end if;
  if p_outcome = 'ok' then
    update realtime_worker.gemini_budget
    set rate_rpm = least(ceiling_rpm, rate_rpm + ceiling_rpm / 20), updated_at = now()
    where model = v_model returning rate_rpm into v_rate;
  elsif p_outcome = 'rate_limited' then
    update realtime_worker.gemini_budget set
      rate_rpm = case when hold_until <= now() then greatest(rate_rpm / 2, ceiling_rpm / 64)
                      else rate_rpm end,
      hold_until = greatest(hold_until, now() + make_interval(secs => greatest(coalesce(p_retry_in_seconds, 1), 0))),
      tat = greatest(tat, now() + make_interval(secs => greatest(coalesce(p_retry_in_seconds, 1), 0))),
      updated_at = now()
    where model = v_model returning rate_rpm into v_rate;
  else
    select rate_rpm into v_rate from realtime_worker.gemini_budget where model = v_model;
  end if;
  return v_rate;
end
$$;

revoke all on function public.worker_gemini_budget_row(text, double precision, int)
  from public, anon, authenticated, service_role;
do $$
declare
  fn text;
begin
  foreach fn in array array[
    'public.worker_gemini_acquire(text, text, double precision, int, double precision, int)',
    'public.worker_gemini_release(uuid, text, double precision)'
  ] loop
    execute format('revoke all on function %s from public, anon, authenticated', fn);
    execute format('grant execute on function %s to service_role', fn);
  end loop;
end
$$;
