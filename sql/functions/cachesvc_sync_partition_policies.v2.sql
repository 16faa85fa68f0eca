-- Version 2: the same body, with pg_temp named last in its search_path. Where pg_temp is not
-- named, PostgreSQL searches it FIRST for tables: this function runs with its caller's rights,
-- which include a SECURITY DEFINER's (ensure_monthly_partitions), so a login's temp table
-- named like a catalog (pg_temp.pg_class) could steer it. Version 1 had that hole.
--
-- Make every partition of `parent` carry exactly the parent's policies, with RLS enabled and
-- forced. Run by migrations that change the parent's policies; safe to run any time
-- (`SELECT cachesvc_sync_partition_policies('infinite_pages_cache_partitioned')`).
-- Returns how many partitions it touched.
CREATE OR REPLACE FUNCTION cachesvc_sync_partition_policies(parent regclass)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    child regclass;
    touched integer := 0;
BEGIN
    FOR child IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = parent LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', child);
        PERFORM cachesvc_copy_partition_policies(parent, child);
        touched := touched + 1;
    END LOOP;
    RETURN touched;
END
$$;
