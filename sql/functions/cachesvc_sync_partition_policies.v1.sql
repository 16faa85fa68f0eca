-- Make every partition of `parent` carry exactly the parent's policies, with RLS enabled and
-- forced. Run by migrations that change the parent's policies; safe to run any time
-- (`SELECT cachesvc_sync_partition_policies('infinite_pages_cache_partitioned')`).
-- Returns how many partitions it touched.
CREATE FUNCTION cachesvc_sync_partition_policies(parent regclass)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, public
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
