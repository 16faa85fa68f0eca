-- Version 2: the same body, with pg_temp named last in its search_path. Where pg_temp is not
-- named, PostgreSQL searches it FIRST for tables: this function runs with its caller's rights,
-- which include a SECURITY DEFINER's (ensure_monthly_partitions), so a login's temp table
-- named like a catalog (pg_temp.pg_class) could steer it. Version 1 had that hole.
--
-- The audit-log partition for the UTC month containing `month` (created if missing);
-- returns its name, e.g. cache_audit_log_y2026m12.
CREATE OR REPLACE FUNCTION create_monthly_audit_partition(month date)
RETURNS text
LANGUAGE sql
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT cachesvc_create_monthly_partition('cache_audit_log', 'cache_audit_log', month)
$$;
