-- The audit-log partition for the UTC month containing `month` (created if missing);
-- returns its name, e.g. cache_audit_log_y2026m12.
CREATE FUNCTION create_monthly_audit_partition(month date)
RETURNS text
LANGUAGE sql
SET search_path = pg_catalog, public
AS $$
    SELECT cachesvc_create_monthly_partition('cache_audit_log', 'cache_audit_log', month)
$$;
