-- The devstack's PostgREST stand-in: catalogue queries, run once per function or table and cached.
-- (Statements for calls and table reads are built per request from quoted identifiers.)

-- name: function_signature
select p.proretset as returns_set, p.prorettype = 'pg_catalog.void'::regtype as returns_void,
       p.pronargdefaults as defaults, coalesce(p.proargnames, '{}') as names,
       coalesce(p.proargmodes::text[], '{}') as modes,
       array(select format_type(u.t, null)
             from unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])) with ordinality u(t, n)
             order by u.n) as types
from pg_proc p
where p.pronamespace = $1::regnamespace and p.proname = $2 and p.prokind = 'f'

-- name: table_columns
select a.attname as name, format_type(a.atttypid, a.atttypmod) as type
from pg_attribute a join pg_class c on c.oid = a.attrelid
where c.relnamespace = $1::regnamespace and c.relname = $2 and c.relkind in ('r', 'v', 'm', 'p', 'f')
  and a.attnum > 0 and not a.attisdropped
order by a.attnum
