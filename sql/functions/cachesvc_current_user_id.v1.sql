-- The user on whose behalf the current transaction runs, or NULL when none is set.
-- The service sets it with set_config('cachesvc.user_id', $1, true): transaction-local,
-- so it can never leak into the next transaction on a pooled (PgBouncer) server connection.
-- Every row-level security policy that filters by user calls this one function.
CREATE FUNCTION cachesvc_current_user_id() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT NULLIF(current_setting('cachesvc.user_id', true), '')::uuid $$;
