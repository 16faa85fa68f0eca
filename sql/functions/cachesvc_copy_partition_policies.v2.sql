-- Version 2: the same body, with pg_temp named last in its search_path. Where pg_temp is not
-- named, PostgreSQL searches it FIRST for tables: this function runs with its caller's rights,
-- which include a SECURITY DEFINER's (ensure_monthly_partitions), so a login's temp table
-- named like a catalog (pg_temp.pg_class) could steer it. Version 1 had that hole.
--
-- Give `child` exactly the policies of `parent` (verbatim copies; any other policy of the
-- child is dropped first). Used when a partition is created and when a migration changes the
-- parent's policies (cachesvc_sync_partition_policies).
CREATE OR REPLACE FUNCTION cachesvc_copy_partition_policies(parent regclass, child regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    pol record;
    roles text;
BEGIN
    FOR pol IN SELECT polname FROM pg_policy WHERE polrelid = child LOOP
        EXECUTE format('DROP POLICY %I ON %s', pol.polname, child);
    END LOOP;
    FOR pol IN
        SELECT p.polname, p.polpermissive, p.polroles,
               CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                             WHEN 'd' THEN 'DELETE' ELSE 'ALL' END AS command,
               pg_get_expr(p.polqual, p.polrelid) AS using_expr,
               pg_get_expr(p.polwithcheck, p.polrelid) AS check_expr
          FROM pg_policy p
         WHERE p.polrelid = parent
         ORDER BY p.polname
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
END
$$;
