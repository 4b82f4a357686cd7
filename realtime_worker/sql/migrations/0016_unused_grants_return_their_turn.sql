-- realtime-worker: a grant its job never used gives its turn in the rate back (docs/scaling.md).
-- A job that fails before its Gemini request (bad input, a photo that cannot be read) made no
-- request, but its claim took a turn (0014): a run of such jobs held the fleet's budget from
-- everyone else. Released as 'unused', the grant now rolls the schedule back when it was the last
-- turn given (tat is still its start + one interval at the current rate): as if it had never been
-- given. An earlier turn stays taken: reusing that hole would put two requests within one
-- interval. Never back before now (no burst beyond an idle budget) nor into a hold.
-- Everything else as 0011. Additive and idempotent: applying twice changes nothing.

create or replace function public.worker_gemini_release(
  p_grant uuid, p_outcome text, p_retry_in_seconds double precision
) returns double precision
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_model text;
  v_starts timestamptz;
  v_rate double precision;
begin
  delete from realtime_worker.gemini_grants where id = p_grant
  returning model, starts_at into v_model, v_starts;
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
    if p_outcome = 'unused' then
      update realtime_worker.gemini_budget
      set tat = greatest(v_starts, now(), hold_until), updated_at = now()
      where model = v_model
        and abs(extract(epoch from tat - v_starts) - 60.0 / rate_rpm) < 0.001;
    end if;
    select rate_rpm into v_rate from realtime_worker.gemini_budget where model = v_model;
  end if;
  return v_rate;
end
$$;
