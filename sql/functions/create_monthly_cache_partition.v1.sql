-- The cache partition for the UTC month containing `month` (created if missing); returns
-- its name, e.g. SELECT create_monthly_cache_partition('2026-12-01') -> infinite_pages_cache_y2026m12.
CREATE FUNCTION create_monthly_cache_partition(month date)
RETURNS text
LANGUAGE sql
SET search_path = pg_catalog, public
AS $$
    SELECT cachesvc_create_monthly_partition('infinite_pages_cache_partitioned', 'infinite_pages_cache', month)
$$;
