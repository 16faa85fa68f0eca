-- The service's self-healing write path: when an insert fails with "no partition of
-- relation found for row", the service calls this (in its own transaction) and retries
-- once, so no write is lost to a month that maintenance has not created yet.
--
-- SECURITY DEFINER: it runs as its owner, cache_maintainer, the only role that may create
-- partitions; cache_app may execute it and nothing else of the kind. It creates the cache
-- and audit partitions of one month only, and only of a month near now, so a caller
-- cannot use it to litter the schema.
CREATE FUNCTION ensure_monthly_partitions(at timestamptz DEFAULT now())
RETURNS text[]
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    month date := (at AT TIME ZONE 'UTC')::date;
BEGIN
    IF at IS NULL OR at < now() - interval '31 days' OR at > now() + interval '400 days' THEN
        RAISE EXCEPTION 'ensure_monthly_partitions: % is outside the window the service may create (now - 31 days .. now + 400 days)', at
              USING ERRCODE = '22023';
    END IF;
    RETURN ARRAY[create_monthly_cache_partition(month), create_monthly_audit_partition(month)];
END
$$;
