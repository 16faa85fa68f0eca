-- Version 2: the same body, with pg_temp named last in its search_path. Where pg_temp is not
-- named, PostgreSQL searches it FIRST for tables: this function runs with its caller's rights,
-- which include a SECURITY DEFINER's (ensure_monthly_partitions), so a login's temp table
-- named like a catalog (pg_temp.pg_class) could steer it. Version 1 had that hole.
--
-- Create the partition of `parent` for the UTC month containing `month`, named
-- <prefix>_yYYYYmMM, unless it exists; returns its name. Idempotent and safe to call
-- concurrently (creators are serialised by an advisory transaction lock).
--
-- A new partition inherits the parent's columns and partitioned indexes, but not its
-- row-level security or privileges, so this function makes it match:
--   * owner cache_maintainer; RLS enabled AND forced;
--   * a copy of every policy of the parent, verbatim (cachesvc_copy_partition_policies);
--   * no privileges for PUBLIC, cache_app or cache_monitor: the service reaches rows only
--     through the parent, where the policies are evaluated.
CREATE OR REPLACE FUNCTION cachesvc_create_monthly_partition(parent regclass, prefix text, month date)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    first_day date := date_trunc('month', month)::date;
    lower_bound timestamptz := first_day::timestamp AT TIME ZONE 'UTC';
    upper_bound timestamptz := (first_day + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    schema_name text;
    child text := prefix || to_char(first_day, '"_y"YYYY"m"MM');
    qualified text;
BEGIN
    SELECT n.nspname INTO schema_name
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = parent AND c.relkind = 'p';
    IF schema_name IS NULL THEN
        RAISE EXCEPTION '% is not a partitioned table', parent USING ERRCODE = '42809';
    END IF;
    qualified := format('%I.%I', schema_name, child);

    PERFORM pg_advisory_xact_lock(hashtextextended('cachesvc.partitions', 0));
    IF to_regclass(qualified) IS NOT NULL THEN
        RETURN child;
    END IF;

    EXECUTE format('CREATE TABLE %s PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                   qualified, parent, lower_bound, upper_bound);
    EXECUTE format('ALTER TABLE %s OWNER TO cache_maintainer', qualified);
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', qualified);
    EXECUTE format('REVOKE ALL ON %s FROM PUBLIC, cache_app, cache_monitor', qualified);

    PERFORM cachesvc_copy_partition_policies(parent, qualified::regclass);
    RETURN child;
END
$$;
