-- realtime-worker hardening (opt-in: `realtime-worker migrate --harden`, `realtime-worker sql --harden`).
-- Apply once the app creates jobs with public.create_job (docs/security.md "Hardening"). Signed-in
-- users (and anon) then lose the direct writes that let them mint credits or get free pages:
-- INSERT/UPDATE on jobs, INSERT/UPDATE on credits, INSERT on credit_events and EXECUTE on
-- increment_user_credits. Reads stay (RLS still limits them to the user's own rows); the service
-- role keeps everything (the Stripe webhook and the worker use it). Idempotent: REVOKE and GRANT
-- of what is already revoked or granted change nothing. Undo: grant the same privileges back.

revoke insert, update on table public.jobs from anon, authenticated;
revoke insert, update on table public.credits from anon, authenticated;
revoke insert on table public.credit_events from anon, authenticated;
grant select, insert, update, delete on table public.jobs, public.credits, public.credit_events
  to service_role;

-- increment_user_credits exists only where the app created it (it is in none of its migrations).
do $$
begin
  if to_regprocedure('public.increment_user_credits(uuid, integer)') is not null then
    revoke execute on function public.increment_user_credits(uuid, integer) from public, anon, authenticated;
    grant execute on function public.increment_user_credits(uuid, integer) to service_role;
  end if;
end
$$;
