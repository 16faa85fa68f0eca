-- Make every partition of `parent` carry exactly the parent's policies (dropping the rest),
-- with RLS enabled and forced. Run by migrations that change the parent's policies; safe to
-- run any time (`SELECT cachesvc_sync_partition_policies('infinite_pages_cache_partitioned')`).
-- Returns how many partitions it touched.
CREATE FUNCTION cachesvc_sync_partition_policies(parent regclass)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, public
AS $$
DECLARE
    child regclass;
    pol record;
    roles text;
    touched integer := 0;
BEGIN
    FOR child IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = parent LOOP
        FOR pol IN SELECT polname FROM pg_policy WHERE polrelid = child LOOP
            EXECUTE format('DROP POLICY %I ON %s', pol.polname, child);
        END LOOP;
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', child);
        FOR pol IN
            SELECT p.polname, p.polpermissive, p.polroles,
                   CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                                 WHEN 'd' THEN 'DELETE' ELSE 'ALL' END AS command,
                   pg_get_expr(p.polqual, p.polrelid) AS using_expr,
                   pg_get_expr(p.polwithcheck, p.polrelid) AS check_expr
              FROM pg_policy p
             WHERE p.polrelid = parent
        LOOP
            SELECT string_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE quote_ident(r::regrole::text) END, ', ')
              INTO roles
              FROM unnest(pol.polroles) AS r;
            EXECUTE format('CREATE POLICY %I ON %s AS %s FOR %s TO %s%s%s',
                           pol.polname, child,
                           CASE WHEN pol.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                           pol.command, roles,
                           CASE WHEN pol.using_expr IS NOT NULL THEN format(' USING (%s)', pol.using_expr) ELSE '' END,
                           CASE WHEN pol.check_expr IS NOT NULL THEN format(' WITH CHECK (%s)', pol.check_expr) ELSE '' END);
        END LOOP;
        touched := touched + 1;
    END LOOP;
    RETURN touched;
END
$$;
