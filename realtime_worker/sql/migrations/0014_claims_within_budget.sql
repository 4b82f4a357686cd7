-- realtime-worker: a claim takes its Gemini grant with it (issue 18, docs/scaling.md).
-- With GEMINI_RPM set, a worker claims through worker_claim_jobs_within_budget instead of
-- worker_claim_jobs / worker_claim_job: in ONE call, under the budget row's lock, it claims only
-- as many jobs as the fleet's budget can start within p_ahead_seconds (rate and concurrency of
-- 0011), and gives each claimed job its grant. So a job is chosen when its turn at Gemini comes,
-- not earlier: a slot never holds a job that waits for the budget, and the fair order of 0012
-- decides who goes next at the moment a request can really start. Before, a worker claimed as
-- many jobs as it had slots and each then waited up to GEMINI_BUDGET_WAIT_SECONDS for its grant,
-- so a user arriving behind a burst waited for every grant the burst's jobs already held.
--
-- Returns {"jobs": [job rows], "grants": [{"job", "grant", "wait_seconds"}], "wait_seconds": w}:
-- w is null when the budget did not hold the claim back (the queue gave what it had), else the
-- seconds until the budget has room again and jobs are due (the worker comes back then). With
-- nothing due it is null: an idle worker makes no request beyond its sweep.
-- p_job_id claims that job only (a Realtime event), within the same budget.
-- Additive and idempotent: applying twice changes nothing.

-- The model's row (0011's worker_gemini_budget_row, locked), the caller's limits checked and the
-- grants whose lease ran out dropped: the same first steps as worker_gemini_acquire.
create or replace function public.worker_gemini_budget_open(p_model text, p_rpm double precision,
                                                            p_max_concurrent int)
returns realtime_worker.gemini_budget
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  b realtime_worker.gemini_budget;
begin
  if p_rpm is null or p_rpm <= 0 or p_max_concurrent is null or p_max_concurrent < 1 then
    perform public.worker_raise('22023', 'the Gemini budget needs a rate > 0 and a concurrency >= 1');
  end if;
  b := public.worker_gemini_budget_row(p_model, p_rpm, p_max_concurrent);
  delete from realtime_worker.gemini_grants g where g.model = p_model and g.expires_at < now();
  return b;
end
$$;

create or replace function public.worker_claim_jobs_within_budget(
  p_worker text, p_limit int, p_lease_seconds int, p_job_id uuid,
  p_model text, p_rpm double precision, p_max_concurrent int,
  p_ahead_seconds double precision, p_grant_lease_seconds int
) returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  b realtime_worker.gemini_budget;
  v_first timestamptz;
  v_wait double precision;
  v_interval double precision;
  v_room int;
  v_by_rate int;
  v_n int;
  v_start timestamptz;
  v_grant uuid;
  v_jobs jsonb := '[]'::jsonb;
  v_grants jsonb := '[]'::jsonb;
  v_claimed public.jobs[];
  r public.jobs;
begin
  b := public.worker_gemini_budget_open(p_model, p_rpm, p_max_concurrent);
  v_first := greatest(now(), b.tat, b.hold_until);
  v_wait := extract(epoch from v_first - now());
  v_interval := 60.0 / b.rate_rpm;
  v_room := b.max_concurrent - (select count(*) from realtime_worker.gemini_grants where model = p_model);
  v_by_rate := case when v_wait > p_ahead_seconds then 0
                    else floor((p_ahead_seconds - v_wait) / v_interval)::int + 1 end;
  v_n := least(greatest(p_limit, 0), greatest(v_room, 0), v_by_rate);
  if v_n = 0 then
    if p_limit > 0 and exists (select 1 from public.jobs q
                               where q.status = 'queued' and q.run_after <= now()
                                 and (p_job_id is null or q.id = p_job_id)) then
      return jsonb_build_object('jobs', v_jobs, 'grants', v_grants, 'wait_seconds',
        case when v_by_rate = 0 then greatest(v_wait - p_ahead_seconds, 0.05) else 1.0 end);
    end if;
    return jsonb_build_object('jobs', v_jobs, 'grants', v_grants, 'wait_seconds', null);
  end if;
  v_start := v_first;
  if p_job_id is null then
    select coalesce(array_agg(c), '{}') into v_claimed
    from public.worker_claim_jobs(p_worker, v_n, p_lease_seconds) c;
  else
    select coalesce(array_agg(c), '{}') into v_claimed
    from public.worker_claim_job(p_job_id, p_worker, p_lease_seconds) c;
  end if;
  foreach r in array v_claimed loop
    insert into realtime_worker.gemini_grants (model, worker, starts_at, expires_at)
    values (p_model, p_worker, v_start, v_start + make_interval(secs => p_grant_lease_seconds))
    returning id into v_grant;
    v_jobs := v_jobs || jsonb_build_array(to_jsonb(r));
    v_grants := v_grants || jsonb_build_array(jsonb_build_object(
      'job', r.id, 'grant', v_grant, 'wait_seconds', greatest(extract(epoch from v_start - now()), 0)));
    v_start := v_start + make_interval(secs => v_interval);
  end loop;
  if jsonb_array_length(v_jobs) > 0 then
    update realtime_worker.gemini_budget set tat = v_start, updated_at = now() where model = p_model;
  end if;
  -- Held back by the budget (the queue gave all the budget allowed, fewer than asked): say when
  -- there is room again, so the worker claims the rest then (the rate's next turn, or a second
  -- for a grant to end when the concurrency was the limit).
  return jsonb_build_object('jobs', v_jobs, 'grants', v_grants, 'wait_seconds',
    case when p_job_id is null and jsonb_array_length(v_jobs) = v_n and v_n < p_limit then
      case when v_n >= v_by_rate then greatest(extract(epoch from v_start - now()) - p_ahead_seconds, 0.05)
           else 1.0 end
    end);
end
$$;

revoke all on function public.worker_gemini_budget_open(text, double precision, int)
  from public, anon, authenticated, service_role;
do $$
declare
  fn text := 'public.worker_claim_jobs_within_budget(text, int, int, uuid, text, double precision, int, double precision, int)';
begin
  execute format('revoke all on function %s from public, anon, authenticated', fn);
  execute format('grant execute on function %s to service_role', fn);
end
$$;
