-- Add one flush of per-entry hit counts: hit_count += hits, last_accessed_at moves forward
-- only. Rows are named by their primary key (id, created_at), so each lands in its own
-- partition. Entries deleted meanwhile are skipped. Returns how many rows it updated.
--
-- SECURITY DEFINER (owner cache_maintainer): a GET never writes a row in the request's
-- own transaction; the service flushes counters for all users in one statement here.
CREATE FUNCTION record_cache_hits(ids bigint[], created_ats timestamptz[], hits bigint[],
                                  accessed_ats timestamptz[])
RETURNS integer
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    WITH touched AS (
        UPDATE infinite_pages_cache_partitioned c
           SET hit_count = c.hit_count + greatest(x.h, 0),
               last_accessed_at = greatest(c.last_accessed_at, x.a)
          FROM unnest(ids, created_ats, hits, accessed_ats) AS x(id, created_at, h, a)
         WHERE c.id = x.id AND c.created_at = x.created_at
        RETURNING 1)
    SELECT count(*)::integer FROM touched
$$;
