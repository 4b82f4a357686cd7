-- realtime-worker: money and trust (DESIGN.md "Money"; docs/security.md).
-- Nothing a signed-in user sends through the public API may mint credits, jump the queue or fake
-- a job. Three parts, all idempotent (applying twice changes nothing):
--   1. jobs.charged_via records who charged a job: 'create_job' (debited by public.create_job in
--      the job's own transaction), 'direct' (inserted by an API role: the charge, if any, was made
--      by the app in another request and cannot be verified), 'service' (service role or owner).
--   2. The guard of 0003, extended: rows written by the API roles start queued, now, unpaid by us
--      and bounded in size; their status, params, owner and queue position cannot be changed.
--   3. public.create_job(p_params): lock, validate, debit, insert and write the ledger at once.
-- And the refund rule the worker's functions follow (worker_refund_job, used by worker_fail_job
-- and worker_reap_expired): refunds never exceed what a job verifiably paid.

-- 1. Who charged the job. Rows that exist before this migration were inserted by the app's routes
-- (we cannot tell which were paid), so they are 'direct'; later rows default to 'service' and the
-- guard and create_job set the other two values themselves.
alter table public.jobs add column if not exists charged_via text not null default 'direct';
alter table public.jobs alter column charged_via set default 'service';
do $$
begin
  if not exists (select 1 from pg_constraint
                 where conrelid = 'public.jobs'::regclass and conname = 'jobs_charged_via_check') then
    alter table public.jobs add constraint jobs_charged_via_check
      check (charged_via in ('create_job', 'direct', 'service'));
  end if;
end
$$;

-- 2. The guard (same function and trigger as 0003, replaced in place). Statements of the API roles
-- only; service_role, the owner and the security-definer functions (create_job, worker_*) are not
-- affected. Worker columns are reset or kept silently (0003); what would change the meaning of a
-- job is refused with an error the caller can read.
create or replace function public.worker_guard_job_columns() returns trigger
language plpgsql security invoker set search_path = public, pg_temp as $$
declare
  v_changed text[];
begin
  if current_user not in ('anon', 'authenticated') then
    return new;
  end if;
  if tg_op = 'INSERT' then
    if new.status is distinct from 'queued' then
      raise exception using errcode = '42501',
        message = format('a new job starts queued, not %s: only the worker changes jobs.status', new.status);
    end if;
    -- A job's parameters are a small JSON document; 16 KB holds every app route's with room to spare.
    if octet_length(new.params_json::text) > 16384 then
      raise exception using errcode = '22023',
        message = format('params_json is too large: %s bytes, at most 16384 are accepted',
                         octet_length(new.params_json::text));
    end if;
    new.created_at := now();
    new.updated_at := now();
    new.started_at := null;
    new.ended_at := null;
    new.error := null;
    new.attempts := 0;
    new.max_attempts := 3;
    new.run_after := now();
    new.locked_by := null;
    new.locked_until := null;
    new.heartbeat_at := null;
    new.error_code := null;
    new.credits_charged := 1;
    new.charged_via := 'direct';
    new.refunded_at := null;
    return new;
  end if;
  -- No route of the app updates a job; these columns decide what is drawn, for whom, in which
  -- order and in which state.
  v_changed := array_remove(array[
    case when new.id is distinct from old.id then 'id' end,
    case when new.status is distinct from old.status then 'status' end,
    case when new.params_json is distinct from old.params_json then 'params_json' end,
    case when new.user_id is distinct from old.user_id then 'user_id' end,
    case when new.created_at is distinct from old.created_at then 'created_at' end
  ], null);
  if cardinality(v_changed) > 0 then
    raise exception using errcode = '42501',
      message = format('jobs.%s cannot be changed through the API', array_to_string(v_changed, ', jobs.'));
  end if;
  new.attempts := old.attempts;
  new.max_attempts := old.max_attempts;
  new.run_after := old.run_after;
  new.locked_by := old.locked_by;
  new.locked_until := old.locked_until;
  new.heartbeat_at := old.heartbeat_at;
  new.error_code := old.error_code;
  new.credits_charged := old.credits_charged;
  new.charged_via := old.charged_via;
  new.refunded_at := old.refunded_at;
  return new;
end
$$;

-- 3. The refund rule. A job charged by create_job (or by a trusted writer) is refunded exactly its
-- recorded charge. A 'direct' job's charge cannot be verified: it is refunded one credit, and only
-- when the failure is ours (Gemini outage or limits, an unusable answer, our Storage or database,
-- a lease that ran out, a crash); never for input the user controls (bad params, a missing or
-- unreadable photo, refused content). The codes are the worker's (realtime_worker/*.py).
create or replace function public.worker_refund_amount(p_job public.jobs) returns int
language sql immutable set search_path = public, pg_temp as $$
  select case
    when p_job.credits_charged <= 0 then 0
    when p_job.charged_via <> 'direct' then p_job.credits_charged
    when p_job.error_code = any (array[
      'lease_expired', 'internal', 'gemini_timeout', 'gemini_unavailable', 'gemini_error',
      'rate_limited', 'daily_quota', 'no_image', 'unusable_output', 'storage_unavailable',
      'storage_refused', 'database_unavailable']) then 1
    else 0
  end
$$;

-- Refund a failed job once: the unique index on (job_id, reason) makes a second call a no-op.
create or replace function public.worker_refund_job(p_job public.jobs) returns boolean
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_amount int := public.worker_refund_amount(p_job);
  v_event uuid;
begin
  if v_amount <= 0 then
    return false;
  end if;
  insert into public.credit_events (user_id, delta, reason, job_id)
  values (p_job.user_id, v_amount, 'generation_failed', p_job.id)
  on conflict (job_id, reason) where job_id is not null do nothing
  returning id into v_event;
  if v_event is null then
    return false;
  end if;
  insert into public.credits as c (user_id, balance) values (p_job.user_id, v_amount)
  on conflict (user_id) do update set balance = c.balance + excluded.balance, updated_at = now();
  update public.jobs set refunded_at = now() where id = p_job.id;
  return true;
end
$$;

-- 4. One call to create a job (docs/security.md "create_job"). The error codes follow PostgREST's
-- conventions: 22023 -> 400, PT403 -> 403, PT404 -> 404, PT402 -> 402 (Payment Required).
create or replace function public.worker_raise(p_code text, p_message text) returns void
language plpgsql immutable set search_path = public, pg_temp as $$
begin
  raise exception using errcode = p_code, message = p_message;
end
$$;

create or replace function public.worker_param_text(p_params jsonb, p_key text, p_min int, p_max int,
                                                    p_required boolean) returns void
language plpgsql immutable set search_path = public, pg_temp as $$
begin
  if jsonb_typeof(p_params -> p_key) is null or jsonb_typeof(p_params -> p_key) = 'null' then
    if p_required then
      perform public.worker_raise('22023', format('%s is required', p_key));
    end if;
  elsif jsonb_typeof(p_params -> p_key) <> 'string'
        or char_length(p_params ->> p_key) not between p_min and p_max then
    perform public.worker_raise('22023', format('%s must be text of %s to %s characters', p_key, p_min, p_max));
  end if;
end
$$;

create or replace function public.worker_param_choice(p_params jsonb, p_key text, p_allowed text[],
                                                      p_required boolean) returns void
language plpgsql immutable set search_path = public, pg_temp as $$
begin
  if jsonb_typeof(p_params -> p_key) is null or jsonb_typeof(p_params -> p_key) = 'null' then
    if p_required then
      perform public.worker_raise('22023', format('%s is required', p_key));
    end if;
  elsif jsonb_typeof(p_params -> p_key) <> 'string' or not (p_params ->> p_key = any (p_allowed)) then
    perform public.worker_raise('22023', format('%s must be one of %s', p_key, array_to_string(p_allowed, ', ')));
  end if;
end
$$;

-- The id in p_params ->> p_key, or an error naming the field.
create or replace function public.worker_param_id(p_params jsonb, p_key text) returns uuid
language plpgsql immutable set search_path = public, pg_temp as $$
begin
  if jsonb_typeof(p_params -> p_key) is distinct from 'string'
     or p_params ->> p_key !~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$' then
    perform public.worker_raise('22023', format('%s must be an id', p_key));
  end if;
  return (p_params ->> p_key)::uuid;
end
$$;

-- The job's kind ('text', 'photo', 'edit') from its keys; a key of another kind is refused.
create or replace function public.worker_params_kind(p_params jsonb) returns text
language plpgsql immutable set search_path = public, pg_temp as $$
declare
  v_kind text;
  v_allowed text[] := array['complexity', 'line_thickness', 'paper_size', 'title'];
  v_unknown text;
begin
  if jsonb_typeof(p_params) is distinct from 'object' then
    perform public.worker_raise('22023', 'p_params must be a JSON object');
  end if;
  if octet_length(p_params::text) > 16384 then
    perform public.worker_raise('22023', format(
      'p_params is too large: %s bytes, at most 16384 are accepted', octet_length(p_params::text)));
  end if;
  v_kind := case when p_params ? 'edit_parent_id' then 'edit'
                 when p_params ? 'text_prompt' then 'text'
                 when p_params ? 'asset_id' then 'photo' end;
  if v_kind is null then
    perform public.worker_raise('22023', 'p_params needs text_prompt, asset_id or edit_parent_id');
  end if;
  v_allowed := v_allowed || case v_kind
    when 'text' then array['text_prompt']
    when 'photo' then array['asset_id', 'custom_prompt']
    else array['edit_parent_id', 'edit_prompt', 'edit_source_asset_id', 'custom_prompt'] end;
  select string_agg(k, ', ' order by k) into v_unknown
  from jsonb_object_keys(p_params) k where not (k = any (v_allowed));
  if v_unknown is not null then
    perform public.worker_raise('22023', format('p_params of a %s job may not hold %s', v_kind, v_unknown));
  end if;
  return v_kind;
end
$$;

-- As the app's routes validate them: apps/web/app/api/jobs/text/route.ts (zod), jobs/route.ts,
-- jobs/[id]/edit/route.ts. Free text the routes leave unbounded is held to the worker's limit.
create or replace function public.worker_check_params(p_user uuid, p_params jsonb) returns text
language plpgsql stable set search_path = public, pg_temp as $$
declare
  v_kind text := public.worker_params_kind(p_params);
  v_required boolean := v_kind <> 'edit';  -- an edit copies them from its parent, when it has them
begin
  perform public.worker_param_choice(p_params, 'complexity', array['simple', 'standard', 'detailed'], v_required);
  perform public.worker_param_choice(p_params, 'line_thickness', array['thin', 'medium', 'thick'], v_required);
  perform public.worker_param_choice(p_params, 'paper_size', array['A4', 'Letter'], false);
  perform public.worker_param_text(p_params, 'title', 1, 2000, false);
  perform public.worker_param_text(p_params, 'custom_prompt', 0, 2000, false);
  if v_kind = 'text' then
    perform public.worker_param_text(p_params, 'text_prompt', 5, 500, true);
  elsif v_kind = 'photo' then
    perform public.worker_check_asset(p_user, public.worker_param_id(p_params, 'asset_id'), 'original');
  else
    perform public.worker_check_edit(p_user, p_params);
  end if;
  return v_kind;
end
$$;

create or replace function public.worker_check_asset(p_user uuid, p_asset uuid, p_kind public.asset_kind)
returns void
language plpgsql stable set search_path = public, pg_temp as $$
begin
  if not exists (select 1 from public.assets where id = p_asset and user_id = p_user and kind = p_kind) then
    perform public.worker_raise('PT404', format('no %s asset %s of this user', p_kind, p_asset));
  end if;
end
$$;

create or replace function public.worker_check_edit(p_user uuid, p_params jsonb) returns void
language plpgsql stable set search_path = public, pg_temp as $$
declare
  v_parent uuid := public.worker_param_id(p_params, 'edit_parent_id');
  v_status text;
  v_prompt text := lower(coalesce(p_params ->> 'edit_prompt', ''));
begin
  perform public.worker_param_text(p_params, 'edit_prompt', 3, 200, true);
  if v_prompt ~ '(nsfw|nude|sex|violence|blood|weapon|gun|knife)' then
    perform public.worker_raise('22023', 'edit_prompt contains inappropriate content');
  end if;
  select status::text into v_status from public.jobs where id = v_parent and user_id = p_user;
  if v_status is null then
    perform public.worker_raise('PT404', format('no job %s of this user to edit', v_parent));
  elsif v_status <> 'succeeded' then
    perform public.worker_raise('22023', 'only a succeeded job can be edited');
  end if;
  if (select count(*) from public.jobs
      where user_id = p_user and params_json @> jsonb_build_object('edit_parent_id', v_parent::text)) >= 2 then
    perform public.worker_raise('PT403', 'a job can be edited at most twice');
  end if;
  perform public.worker_check_asset(p_user, public.worker_param_id(p_params, 'edit_source_asset_id'), 'edge_map');
end
$$;

create or replace function public.create_job(p_params jsonb) returns public.jobs
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  v_user uuid := auth.uid();
  v_balance int;
  v_kind text;
  v_job public.jobs;
begin
  if v_user is null then
    perform public.worker_raise('42501', 'create_job needs a signed-in user');
  end if;
  -- The lock orders a user's calls: two concurrent calls cannot both spend the last credit,
  -- nor both pass the edit limit.
  select balance into v_balance from public.credits where user_id = v_user for update;
  v_kind := public.worker_check_params(v_user, p_params);
  if coalesce(v_balance, 0) < 1 then
    perform public.worker_raise('PT402', 'Insufficient credits');
  end if;
  update public.credits set balance = balance - 1, updated_at = now() where user_id = v_user;
  insert into public.jobs (user_id, status, params_json, credits_charged, charged_via)
  values (v_user, 'queued', p_params, 1, 'create_job')
  returning * into v_job;
  insert into public.credit_events (user_id, delta, reason, job_id)
  values (v_user, -1, case v_kind when 'edit' then 'edit_queued' else 'generation_queued' end, v_job.id);
  return v_job;
end
$$;

-- Helpers are not an API: nobody calls them over PostgREST (Supabase's default privileges would
-- grant them to every API role). create_job is for signed-in users only.
do $$
declare
  fn text;
begin
  foreach fn in array array[
    'public.worker_guard_job_columns()',
    'public.worker_refund_amount(public.jobs)',
    'public.worker_refund_job(public.jobs)',
    'public.worker_raise(text, text)',
    'public.worker_param_text(jsonb, text, int, int, boolean)',
    'public.worker_param_choice(jsonb, text, text[], boolean)',
    'public.worker_param_id(jsonb, text)',
    'public.worker_params_kind(jsonb)',
    'public.worker_check_params(uuid, jsonb)',
    'public.worker_check_asset(uuid, uuid, public.asset_kind)',
    'public.worker_check_edit(uuid, jsonb)'
  ] loop
    execute format('revoke all on function %s from public, anon, authenticated, service_role', fn);
  end loop;
end
$$;
revoke all on function public.create_job(jsonb) from public, anon, service_role;
grant execute on function public.create_job(jsonb) to authenticated;
