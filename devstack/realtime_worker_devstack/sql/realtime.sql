-- The devstack's Realtime: its change trigger (installed by the devstack, never by the worker's
-- migration) and the catalogue queries it runs once per table or join. Named queries.

-- name: install
select pg_advisory_xact_lock(hashtext('_devstack_realtime'));
create schema if not exists _devstack;
revoke all on schema _devstack from public;
create sequence if not exists _devstack.realtime_seq;
create unlogged table if not exists _devstack.realtime_overflow (
  id bigint primary key,
  payload text not null,
  created_at timestamptz not null default now()
);
-- (schema, table, event) pairs some channel subscribed to; the trigger notifies only those, so
-- writes nobody listens to cost nothing extra (real Supabase reads the WAL instead). Rows are
-- only ever added: a stale one costs a notification, never a missed event.
create table if not exists _devstack.realtime_interest (
  schema_name text not null,
  table_name text not null,
  event text not null,
  primary key (schema_name, table_name, event)
);
-- big changes written while no devstack was listening
delete from _devstack.realtime_overflow where created_at < now() - interval '1 hour';
-- One notification on the channel the devstack's Realtime server listens to; a body too large for
-- NOTIFY (8000 bytes) waits in realtime_overflow and the notification names its sequence number.
create or replace function _devstack.publish(seq bigint, body text) returns void
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if octet_length(body) >= 8000 then
    insert into _devstack.realtime_overflow (id, payload) values (seq, body);
    body := json_build_object('overflow', seq)::text;
  end if;
  perform pg_notify('_devstack_realtime', body);
end
$$;
create or replace function _devstack.realtime_notify() returns trigger
language plpgsql security definer
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
as $$
declare
  seq bigint;
  body text;
begin
  if not exists (
    select 1 from _devstack.realtime_interest
    where schema_name = tg_table_schema and table_name = tg_table_name and event in (tg_op, '*')
  ) then
    return null;
  end if;
  seq := nextval('_devstack.realtime_seq');
  body := json_build_object(
    'seq', seq,
    'schema', tg_table_schema,
    'table', tg_table_name,
    'type', tg_op,
    'commit_timestamp', to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
    'record', case when tg_op <> 'DELETE' then to_jsonb(new) end,
    'old_record', case when tg_op <> 'INSERT' then to_jsonb(old) end)::text;
  perform _devstack.publish(seq, body);
  return null;
end
$$;
-- Broadcast from Database: the real server streams realtime.messages by logical replication; the
-- devstack notifies each committed broadcast row on the same channel as the changes.
create or replace function _devstack.broadcast_notify() returns trigger
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  seq bigint;
  body text;
begin
  if new.extension <> 'broadcast' then
    return null;
  end if;
  seq := nextval('_devstack.realtime_seq');
  body := json_build_object('broadcast', json_build_object(
    'id', new.id, 'topic', new.topic, 'event', new.event, 'private', coalesce(new.private, false),
    'payload', new.payload))::text;
  perform _devstack.publish(seq, body);
  return null;
end
$$;
do $$
begin
  if to_regclass('realtime.messages') is not null and not exists (
      select 1 from pg_trigger where tgrelid = 'realtime.messages'::regclass
        and tgname = '_devstack_broadcast') then
    create trigger _devstack_broadcast after insert on realtime.messages
      for each row execute function _devstack.broadcast_notify();
  end if;
end
$$;
create or replace function _devstack.cast_filter(value text, type_name text) returns jsonb
language plpgsql stable
set timezone = 'UTC'
as $$
declare
  result jsonb;
begin
  execute format('select to_jsonb(%L::%s)', value, type_name) into result;
  return result;
end
$$;

-- name: published_tables
select pt.schemaname as schema, pt.tablename as table, c.oid,
       exists (select 1 from pg_trigger tg where tg.tgrelid = c.oid and tg.tgname = $2) as has_trigger
from pg_publication_tables pt
join pg_namespace n on n.nspname = pt.schemaname
join pg_class c on c.relnamespace = n.oid and c.relname = pt.tablename
where pt.pubname = $1

-- name: table_columns
select a.attname as name, t.typname as type,
       quote_ident(tn.nspname) || '.' || quote_ident(t.typname) as sql_type,
       coalesce(a.attnum = any(pk.conkey), false) as is_pk,
       c.relrowsecurity as rls, c.relreplident::text as replident
from pg_class c
join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
join pg_type t on t.oid = a.atttypid
join pg_namespace tn on tn.oid = t.typnamespace
left join pg_constraint pk on pk.conrelid = c.oid and pk.contype = 'p'
where c.oid = $1
order by a.attnum

-- name: hidden_columns
select a.attname from pg_attribute a
where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped
  and not has_column_privilege($2::text, a.attrelid, a.attnum, 'SELECT')

-- name: register_interest
insert into _devstack.realtime_interest (schema_name, table_name, event)
values ($1, $2, $3)
on conflict do nothing


-- name: broadcast_probe
-- How the server authorises a private join (supabase/realtime lib/realtime/tenants/authorization.ex):
-- insert a probe message as the owner, then, as the joining role with realtime.topic() set, see
-- whether RLS lets it read the probe. The caller rolls the transaction back.
insert into realtime.messages (id, topic, extension) values ($1, $2, 'broadcast')

-- name: as_channel_role
select set_config('role', $1, true), set_config('realtime.topic', $2, true),
       set_config('request.jwt.claims', $3, true), set_config('request.jwt.claim.sub', $4, true),
       set_config('request.jwt.claim.role', $1, true)

-- name: probe_visible
select exists (select 1 from realtime.messages where id = $1)

-- name: replay
-- The newest $3 private broadcasts of topic $1 inserted since $2 (epoch ms), oldest first
-- (supabase/realtime lib/realtime/messages.ex replay/5).
select id::text, event, payload from (
  select id, event, payload, inserted_at from realtime.messages
  where topic = $1 and private is true and extension = 'broadcast'
    and inserted_at >= (to_timestamp($2::bigint / 1000.0) at time zone 'UTC')
    and inserted_at < (now() at time zone 'UTC') + interval '1 minute'
  order by inserted_at desc
  limit $3) newest
order by inserted_at
